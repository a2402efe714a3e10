# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GradCache: the loss of a large batch computed in mini-batches, with the memory of one mini-batch.

GCL's negatives come from the batch, and gradient accumulation adds none. GradCache (Gao et al., 2021) makes a large
batch affordable: (1) embed the batch mini-batch by mini-batch without a graph; (2) compute the full loss on those
embeddings and its gradient with respect to them (and to the logit scale); (3) embed each mini-batch again with a graph
and backpropagate the cached gradients through it. The RNG state of each mini-batch is replayed in (3), so dropout
masks match (1). Loss and gradients equal those of the uncached loss.

    @inproceedings{gao2021gradcache,
      title     = {Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
      author    = {Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
      booktitle = {RepL4NLP Workshop},
      year      = {2021}
    }
"""

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

MODEL_INPUT_KEYS = ("pixel_values", "input_ids", "attention_mask")


class RandContext:
    """Captures the CPU and accelerator RNG states now; `with context:` replays them, leaving the global RNG as it
    was afterwards."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices, enabled=True):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


def split_inputs(inputs: dict, mini_batch_size: int) -> list[dict]:
    """Split the model inputs of a batch into mini-batches along the batch dimension."""
    batch_size = inputs["input_ids"].shape[0]
    return [
        {key: inputs[key][start : start + mini_batch_size] for key in MODEL_INPUT_KEYS if inputs.get(key) is not None}
        for start in range(0, batch_size, mini_batch_size)
    ]


class CachedLoss(nn.Module):
    r"""
    Wraps an embedding loss (`GCLLoss`, `CLIPLoss`) so that `CachedLoss(loss, mini_batch_size)(model, inputs)`
    computes it over the whole batch while holding activations for only `mini_batch_size` pairs.

    Call it where the loss would be computed (e.g. `Trainer.compute_loss`) and call `.backward()` on the returned loss
    as usual (scaled for gradient accumulation or AMP if needed): the backward pass re-embeds each mini-batch with a
    graph and backpropagates the cached gradients, times the incoming gradient. Under DDP, gradients are synchronised
    once, on the last mini-batch.
    """

    def __init__(self, loss: nn.Module, mini_batch_size: int):
        super().__init__()
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}.")
        self.loss = loss
        self.mini_batch_size = mini_batch_size

    def forward(self, model: nn.Module, inputs: dict):
        """Returns `(loss, terms, outputs)`: the loss (a leaf whose backward runs the cached backward), its named terms,
        and the model outputs of the whole batch (detached, `logit_scale` included)."""
        chunks = split_inputs(inputs, self.mini_batch_size)
        rng_contexts, outputs_per_chunk = [], []
        with torch.no_grad():
            for chunk in chunks:
                rng_contexts.append(RandContext(*chunk.values()))
                outputs_per_chunk.append(model(**chunk))
        columns = [
            torch.cat([getattr(out, key) for out in outputs_per_chunk]).detach().requires_grad_()
            for key in ("image_embeds", "text_embeds", "fused_embeds")
        ]
        logit_scale = outputs_per_chunk[0].logit_scale.detach().requires_grad_()
        logit_bias = None  # the sigmoid loss's bias, cached like the scale
        extra = {}
        model_bias = getattr(outputs_per_chunk[0], "logit_bias", None)
        if getattr(self.loss, "uses_logit_bias", False) and model_bias is not None:
            logit_bias = model_bias.detach().requires_grad_()
            extra["logit_bias"] = logit_bias

        with torch.enable_grad():
            loss, terms = self.loss(*columns, 1.0 / logit_scale, **extra)
            loss.backward()  # d loss / d embeddings and d loss / d logit scale (and bias), cached below
        embedding_grads = [column.grad for column in columns]
        scale_grad = logit_scale.grad
        bias_grad = None if logit_bias is None else logit_bias.grad

        def backward_through_model(grad_output: torch.Tensor) -> None:
            start = 0
            for index, (chunk, rng) in enumerate(zip(chunks, rng_contexts)):
                last = index == len(chunks) - 1
                end = start + chunk["input_ids"].shape[0]
                sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
                with sync, rng.replay(), torch.enable_grad():
                    out = model(**chunk)
                    surrogate = sum(
                        (embeds * grad[start:end]).sum()
                        for embeds, grad in zip((out.image_embeds, out.text_embeds, out.fused_embeds), embedding_grads)
                        if grad is not None  # e.g. the CLIP loss leaves the fused embeddings unused
                    )
                    if last and scale_grad is not None and out.logit_scale.requires_grad:
                        surrogate = surrogate + out.logit_scale * scale_grad
                    if last and bias_grad is not None and out.logit_bias.requires_grad:
                        surrogate = surrogate + out.logit_bias * bias_grad
                    (surrogate * grad_output).backward()
                start = end

        result = loss.detach().requires_grad_()
        result.register_hook(backward_through_model)
        outputs = outputs_per_chunk[0].__class__(
            image_embeds=columns[0].detach(), text_embeds=columns[1].detach(), fused_embeds=columns[2].detach(),
            logit_scale=logit_scale.detach(),
            logit_bias=None if logit_bias is None else logit_bias.detach(),
        )
        return result, terms, outputs
