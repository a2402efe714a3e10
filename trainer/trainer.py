# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`GCLTrainer`: a `transformers.Trainer` that trains retrievers with GCL (or the CLIP baseline)."""

import contextlib
import errno
import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint, rotate_checkpoints

from modeling_gcl import ALL_LOSS_PAIRS

from .atomic import STAGING_PREFIX, is_disk_full, output_dir_lock, publish_directory, remove_stale_staging
from .data import SKIPPED_SAMPLES_KEY, GCLCollator
from .data import RowIndexedDataset
from .losses import DEFAULT_SIGMOID_BIAS_INIT, LOSSES, CachedLoss, build_loss, check_tile_size
from .lora import EXTRA_TRAINABLES_FILE, apply_lora, freeze_towers, load_extra_trainables, save_extra_trainables
from .data import UniqueGroupBatchSampler

logger = logging.getLogger(__name__)


class _SkipSpecialTokenAlignmentNotice(logging.Filter):
    """`Trainer.train` copies the tokenizer's PAD/BOS/EOS ids into the model config and warns that it did: a notice
    for generative models; a GCL retriever never generates, so there is nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The tokenizer has new PAD/BOS/EOS tokens")


logging.getLogger("transformers.trainer_utils").addFilter(_SkipSpecialTokenAlignmentNotice())


@dataclass
class GCLTrainingArguments(TrainingArguments):
    r"""
    `TrainingArguments` with GCL's loss and LoRA options, and defaults that avoid the known pitfalls of contrastive
    training with `Trainer`: image columns are kept (`remove_unused_columns=False`), the last uneven batch is dropped
    (`dataloader_drop_last=True`: fewer negatives, and a hang of cross-device gathers), and DDP neither broadcasts
    buffers nor searches for unused parameters (every tower is used every step).
    """

    output_dir: str | None = field(default="gcl-output", metadata={"help": "Where the model and checkpoints go."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Pairs per device and step; GCL's negatives come from the batch (3N-1 each)."}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per step over all processes (the batch whose items are each other's negatives): sets "
                          "per_device_train_batch_size = global_batch_size / world size, so a recipe keeps its batch "
                          "on 1 or 8 GPUs. Default: per_device_train_batch_size decides."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X steps (or a ratio of the run if < 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: images are decoded in the collator."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    ddp_broadcast_buffers: bool | None = field(default=False, metadata={"help": "DDP broadcast_buffers."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "DDP find_unused_parameters."})

    loss: str = field(default="gcl", metadata={"help": "Training loss.", "choices": list(LOSSES)})
    loss_pairs: list[str] = field(
        default_factory=lambda: list(ALL_LOSS_PAIRS),
        metadata={"help": "GCL positive pairs counted (ablations): any of " + " ".join(ALL_LOSS_PAIRS)},
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per loss pair (default all 1)."}
    )
    exclude_other_positive: bool = field(
        default=False, metadata={"help": "Drop each anchor's other positive from the GCL denominator (Eq. 2 keeps it)."}
    )
    loss_modalities: list[str] = field(
        default_factory=lambda: ["i", "t", "it"],
        metadata={"help": "Modalities the GCL softmax spans (ablation: --loss_modalities i t --loss_pairs i2t t2i is "
                          "CL plus intra-modality separation)."},
    )
    sigmoid_bias_init: float = field(
        default=DEFAULT_SIGMOID_BIAS_INIT,
        metadata={"help": "--loss gcl_sigmoid: initial value of the learnable logit bias (SigLIP: -10), used when the "
                          "model has none yet."},
    )
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Skip and count unreadable images / bad captions instead of stopping."}
    )
    gather_across_devices: bool = field(
        default=True,
        metadata={"help": "Under distributed training, use every process's batch as negatives (gathered with grad)."},
    )
    batch_unique_column: str | None = field(
        default=None,
        metadata={"help": "A column (e.g. image_id) whose value appears at most once per batch, so duplicates of an "
                          "image or caption never serve as each other's negatives."},
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "GradCache: embed the batch in mini-batches of this size (same loss and gradients, "
                          "the activation memory of one mini-batch). Default: off."},
    )
    loss_tile_size: int | None = field(
        default=None,
        metadata={"help": "Compute the loss's logits in tiles of this side (exact loss and gradients, memory linear "
                          "in the batch; combine with --mini_batch_size for very large batches). Default: automatic, "
                          "tiles of 4096 once the logit matrix has more than 16384 columns (3N for GCL)."},
    )

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt (default: the backbone's preset; CLIP: q_proj k_proj v_proj out_proj fc1 fc2; "
                          "VISTA: BERT's query key value dense, EVA's attention and SwiGLU projections, visual_proj)."},
    )
    lora_frozen_towers: list[str] = field(
        default_factory=list,
        metadata={"help": "With LoRA: towers (text, vision) that get no adapters and stay exactly as loaded."},
    )
    freeze_towers: list[str] = field(
        default_factory=list,
        metadata={"help": "Without LoRA: towers (text, vision) whose weights are not trained (VISTA's first stage "
                          "froze the text encoder: --freeze_towers text)."},
    )
    train_logit_scale: bool = field(
        default=False, metadata={"help": "With LoRA, keep training the (otherwise frozen) logit scale."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_tile_size(self.loss_tile_size)  # a one-line ValueError for a tile size <= 0


def apply_global_batch_size(args: GCLTrainingArguments, per_device_given: bool = False) -> None:
    """Derive `per_device_train_batch_size` from `global_batch_size` and the world size (a no-op without it)."""
    if args.global_batch_size is None:
        return
    world_size = max(args.world_size, 1)
    per_device, remainder = divmod(args.global_batch_size, world_size)
    if remainder or per_device < 1:
        raise ValueError(f"global_batch_size={args.global_batch_size} does not split evenly over {world_size} "
                         "processes; choose a multiple of the number of GPUs.")
    if per_device_given and per_device != args.per_device_train_batch_size:
        raise ValueError(f"global_batch_size={args.global_batch_size} over {world_size} process(es) means "
                         f"{per_device} pairs per device, but per_device_train_batch_size="
                         f"{args.per_device_train_batch_size} was given; set one of them.")
    args.per_device_train_batch_size = per_device


class ResumeError(ValueError):
    """`resume_from_checkpoint` names no usable checkpoint (none saved yet, a missing path, one past `max_steps`)."""


class CheckpointDiskFullError(OSError):
    """The disk filled up while a checkpoint was written; the partial checkpoint was removed."""


TRAINER_STATE_FILE = "trainer_state.json"


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint) -> str | None:
    """The checkpoint folder that `resume_from_checkpoint` names: `True` / `"true"` / `"last"` mean the newest
    `checkpoint-N` in `output_dir`; `None` / `False` / `"false"` mean none. Raises `ResumeError` with one line when
    there is nothing to resume from."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("false", "no", ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("true", "last"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ResumeError(f"--resume_from_checkpoint true: {output_dir} holds no {PREFIX_CHECKPOINT_DIR}-N to "
                              "resume from (checkpoints are written every --save_steps); start without it.")
        return last
    checkpoint = str(resume_from_checkpoint)
    if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_FILE)):
        what = "no such checkpoint folder" if not os.path.isdir(checkpoint) else f"no {TRAINER_STATE_FILE} in it"
        raise ResumeError(f"--resume_from_checkpoint {checkpoint}: {what}.")
    return checkpoint


class GCLTrainer(Trainer):
    r"""
    Trains a [`GCLModel`] on image–caption pairs with the loss named by `args.loss`.

    Each step embeds the batch as images, texts and fused pairs, computes the loss in float32 and logs every named
    term (`loss_i2t`, ..., `loss_it2t` for GCL) with the temperature. `args.use_lora` wraps the model with LoRA.
    Under distributed training the loss scores local anchors against every process's batch
    (`args.gather_across_devices`); `args.mini_batch_size` turns on GradCache.
    Without a `data_collator`, a [`GCLCollator`] over the `image` and `caption` columns is built from
    `processing_class`.
    """

    # `compute_loss` returns a per-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args: GCLTrainingArguments | None = None, data_collator=None, train_dataset=None,
                 loss=None, **kwargs):
        args = args if args is not None else GCLTrainingArguments()
        if getattr(args, "fp16", False) and args.device.type == "cpu":
            raise ValueError("fp16=True needs a CUDA GPU; on the CPU, Trainer would silently train in float32 while the "
                             "run records say fp16. Use bf16=True (bfloat16 autocast works on the CPU) or neither.")
        if args.dataloader_pin_memory and args.device.type == "cpu":
            args.dataloader_pin_memory = False  # pinned memory only helps copies to an accelerator; torch warns on CPU
        if getattr(args, "use_lora", False) and getattr(args, "freeze_towers", None):
            raise ValueError("freeze_towers applies to full fine-tuning; with use_lora, name the towers that get no "
                             "adapters in lora_frozen_towers.")
        sigmoid = getattr(args, "loss", "gcl") == "gcl_sigmoid"
        if sigmoid and model is not None and not hasattr(model, "peft_config") and hasattr(model, "add_logit_bias"):
            model.add_logit_bias(getattr(args, "sigmoid_bias_init", DEFAULT_SIGMOID_BIAS_INIT))  # no-op if it has one
        if getattr(args, "use_lora", False) and not hasattr(model, "peft_config"):
            model = apply_lora(
                model,
                r=args.lora_r,
                alpha=args.lora_alpha,
                dropout=args.lora_dropout,
                target_modules=args.lora_target_modules,
                train_logit_scale=args.train_logit_scale,
                frozen_towers=getattr(args, "lora_frozen_towers", ()),
            )
        elif getattr(args, "freeze_towers", None) and model is not None:
            freeze_towers(model, args.freeze_towers)
        bias = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "logit_bias", None)
        if bias is not None:
            # The sigmoid loss learns its bias, under LoRA too (peft freezes bare parameters); any other loss leaves it
            # untouched, and frozen, since DDP refuses a trainable parameter that gets no gradient.
            bias.requires_grad_(sigmoid)
        if data_collator is None and kwargs.get("processing_class") is not None:
            data_collator = GCLCollator(kwargs["processing_class"], skip_bad_samples=getattr(args, "skip_bad_samples", False))
        if train_dataset is not None and not isinstance(train_dataset, (IterableDataset, RowIndexedDataset)):
            train_dataset = RowIndexedDataset(train_dataset)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset, **kwargs)
        # The model never takes `num_items_in_batch`; the loss is a mean over the batch.
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss if loss is not None else build_loss(
            getattr(args, "loss", "gcl"),
            pairs=getattr(args, "loss_pairs", None),
            weights=getattr(args, "loss_weights", None),
            exclude_other_positive=getattr(args, "exclude_other_positive", False),
            gather_across_devices=getattr(args, "gather_across_devices", True),
            modalities=getattr(args, "loss_modalities", None),
            tile_size=getattr(args, "loss_tile_size", None),
        )
        mini_batch_size = getattr(args, "mini_batch_size", None)
        self.cached_loss = CachedLoss(self.loss_fn, mini_batch_size) if mini_batch_size else None
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0
        self.skipped_samples = Counter()  # message -> count, over the whole run
        self._skipped_since_log = 0

    def get_train_dataloader(self) -> DataLoader:
        column = getattr(self.args, "batch_unique_column", None)
        if column is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if not isinstance(dataset, RowIndexedDataset):
            raise ValueError("batch_unique_column needs a map-style training dataset (not an IterableDataset).")
        rows = dataset.dataset
        if hasattr(rows, "column_names"):
            if column not in rows.column_names:
                raise ValueError(f"batch_unique_column={column!r} is not a column of the data: {rows.column_names}.")
            group_ids = rows[column]
        else:
            group_ids = [row[column] for row in rows]
        sampler = UniqueGroupBatchSampler(
            group_ids, self._train_batch_size, drop_last=self.args.dataloader_drop_last, seed=self.args.seed
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop(SKIPPED_SAMPLES_KEY, None)
        if skipped:
            for message in skipped:
                logger.warning("Skipped a bad sample: %s", message)
            self.skipped_samples.update(skipped)
            self._skipped_since_log += len(skipped)
        if self.cached_loss is not None and torch.is_grad_enabled():
            loss, terms, outputs = self.cached_loss(model, inputs)
        else:
            outputs = model(
                pixel_values=inputs["pixel_values"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs.get("attention_mask"),
            )
            extra = {"logit_bias": outputs.logit_bias} if getattr(self.loss_fn, "uses_logit_bias", False) else {}
            loss, terms = self.loss_fn(
                outputs.image_embeds, outputs.text_embeds, outputs.fused_embeds, 1.0 / outputs.logit_scale, **extra
            )
        temperature = 1.0 / outputs.logit_scale
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite loss {loss.item()} in training step {self.state.global_step + 1} "
                f"(terms: { {k: v.item() for k, v in terms.items()} }, temperature {temperature.item():.4g}); "
                "training stopped; nothing from this step was saved, earlier checkpoints are intact."
            )
        if model.training:
            for key, value in terms.items():
                self._term_sums[key] = self._term_sums.get(key, 0.0) + value
            self._term_sums["temperature"] = self._term_sums.get("temperature", 0.0) + temperature.detach()
            if getattr(outputs, "logit_bias", None) is not None:
                self._term_sums["logit_bias"] = self._term_sums.get("logit_bias", 0.0) + outputs.logit_bias.detach()
            self._term_steps += 1
        outputs.loss, outputs.loss_terms = loss, terms
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_steps:
            for key, total in self._term_sums.items():
                logs[key] = round(float(total) / self._term_steps, 4)
            self._term_sums, self._term_steps = {}, 0
            if getattr(self.args, "skip_bad_samples", False):
                logs["skipped_samples"] = self._skipped_since_log
                self._skipped_since_log = 0
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, holding the output folder's run lock (a second run into it stops at once), and with resume
        rules that never train past the end: resuming a checkpoint taken at the last step (a run that finished, or
        crashed while saving its final model) loads its weights and trains no further step."""
        resume_from_checkpoint = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        with output_dir_lock(self.args.output_dir) if self.args.should_save else contextlib.nullcontext():
            if resume_from_checkpoint is not None:
                finished = self._finished_checkpoint(resume_from_checkpoint)
                if finished is not None:
                    return finished
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                   ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        return self._report_skipped(result)

    def planned_steps(self) -> int:
        """The run's number of optimizer steps (`max_steps`, or the epochs' worth of batches)."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]

    def _finished_checkpoint(self, checkpoint: str) -> TrainOutput | None:
        """When `checkpoint` is at the run's last step, load it and return the finished run's output; `None` when
        steps remain. A checkpoint past the last step is an error (its weights are not this run's result)."""
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_FILE))
        planned = self.planned_steps()
        if state.global_step < planned:
            return None
        if state.global_step > planned:
            raise ResumeError(f"{checkpoint} is at step {state.global_step}, past this run's {planned} steps; "
                              f"raise --max_steps or resume from an earlier {PREFIX_CHECKPOINT_DIR}-N.")
        logger.warning("%s is at the last step (%d of %d): the run is complete, loading its weights and training no "
                       "further step.", checkpoint, state.global_step, planned)
        self._load_from_checkpoint(checkpoint)
        self.state = state
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        metrics = {"global_step": state.global_step, "resumed_finished_checkpoint": os.path.basename(checkpoint)}
        return TrainOutput(state.global_step, losses[-1] if losses else math.nan, metrics)

    def _report_skipped(self, result):
        total = sum(self.skipped_samples.values())
        if getattr(self.args, "skip_bad_samples", False):
            result.metrics["skipped_samples"] = total
        if total:
            shown = "\n  ".join(list(self.skipped_samples)[:20])
            more = f"\n  ... and {len(self.skipped_samples) - 20} more" if len(self.skipped_samples) > 20 else ""
            logger.warning("Skipped %d bad sample(s) during training:\n  %s%s", total, shown, more)
        return result

    def _save(self, output_dir: str | None = None, state_dict=None):
        check_finite_parameters(self.model, f"step {self.state.global_step}")
        super()._save(output_dir, state_dict)
        if hasattr(self.model, "peft_config") and self.args.should_save:
            save_extra_trainables(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_gcl_extras(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_gcl_extras(self.state.best_model_checkpoint)

    def _load_gcl_extras(self, checkpoint_dir: str) -> None:
        """Restore what `Trainer` does not read from a checkpoint, or a resumed run restarts it from its initial value:
        a peft model's bare trainables saved beside the adapter (logit scale, sigmoid bias), or a CLIP-layout
        checkpoint's `gcl_weights.safetensors` (attention fusion, sigmoid bias), which `model.safetensors` lacks."""
        if hasattr(self.model, "peft_config"):
            extras_path = os.path.join(checkpoint_dir, EXTRA_TRAINABLES_FILE)
            if os.path.exists(extras_path):
                load_extra_trainables(self.model, load_file(extras_path), extras_path)
        elif hasattr(self.model, "load_gcl_weights"):
            self.model.load_gcl_weights(checkpoint_dir)

    def _save_checkpoint(self, model, trial):
        """Write `checkpoint-N` under a hidden staging folder, then rename it into place, so a save that a crash
        interrupts never leaves a `checkpoint-N` that `--resume_from_checkpoint` would pick up half-written
        (`Trainer` writes checkpoints in place). A full disk removes the staging folder and raises
        `CheckpointDiskFullError`; earlier checkpoints stay as they were."""
        run_dir = self._get_output_dir(trial=trial)
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}checkpoints")
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            remove_stale_staging(run_dir)  # leftovers of an interrupted save
        self.accelerator.wait_for_everyone()
        self._get_output_dir = lambda trial=None: staging_root  # `Trainer._save_checkpoint` writes under this
        try:
            super()._save_checkpoint(model, trial)
        except BaseException as error:
            shutil.rmtree(staging_root, ignore_errors=True)  # never a half-written checkpoint, even under staging
            # torch's writer reports a full disk as "basic_ios::clear: iostream error"; safetensors and json as OSError
            if is_disk_full(error) or (isinstance(error, RuntimeError) and _disk_nearly_full(run_dir)):
                previous = get_last_checkpoint(run_dir)
                kept = f"{os.path.basename(previous)} is intact" if previous else "no earlier checkpoint exists"
                raise CheckpointDiskFullError(
                    errno.ENOSPC, f"disk full while writing {name} in {run_dir}: the partial checkpoint was removed "
                    f"and {kept}; free some space, then rerun with --resume_from_checkpoint true") from error
            raise
        finally:
            del self._get_output_dir
        best = self.state.best_model_checkpoint
        if best and best.startswith(staging_root):  # Trainer recorded the staging path
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        # Every process has written its RNG state into the staged folder before it is moved.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_directory(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def _disk_nearly_full(folder: str, margin: int = 64 * 2**20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def check_finite_parameters(model: torch.nn.Module, where: str) -> None:
    """Refuse to save a model holding NaN or infinite weights (they would overwrite a good checkpoint)."""
    bad = [name for name, parameter in model.named_parameters()
           if parameter.is_floating_point() and not torch.isfinite(parameter.detach()).all()]
    if bad:
        raise FloatingPointError(
            f"Not saving at {where}: {len(bad)} parameter tensor(s) hold NaN or inf, e.g. {bad[:5]}. "
            "Earlier checkpoints are untouched; lower the learning rate or check the data and resume from one."
        )
