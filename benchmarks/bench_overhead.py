"""Framework overhead: a `GCLTrainer` step (`loss="clip"`) against a bare PyTorch loop and against
sentence-transformers' `MultipleNegativesSymmetricRankingLoss` step with its `SentenceTransformerTrainer`, on the same
randomly initialised bundled tiny CLIP, the same rows and the same optimiser (AdamW, lr 1e-5, no weight decay, no
gradient clipping, constant schedule, 0 dataloader workers).

Four measurements, median seconds per step after warm-up steps, in one run, repeated in alternating order:
    bare            forward + clip loss + backward + AdamW step on one pre-collated batch (GCLCollator);
    gcl_fixed       GCLTrainer on the same pre-collated batch (its collator returns it): the trainer's own overhead;
    gcl             GCLTrainer with its GCLCollator (decode, resize, tokenise every step), from one step's end to
                    the next: what a user's step costs;
    st              SentenceTransformerTrainer + MultipleNegativesSymmetricRankingLoss (image -> caption), with its
                    own collator, measured like `gcl`.
Targets: gcl_fixed / bare <= 1.05, gcl / st <= 1.0.

    python benchmarks/bench_overhead.py [--batch_size 32] [--steps 8] [--rounds 2]
"""

import argparse
import copy
import statistics
import tempfile
import time
import warnings

import datasets
import torch
from transformers import CLIPProcessor, TrainerCallback

from modeling_gcl import GCLModel
from trainer import GCLCollator, GCLTrainer, GCLTrainingArguments, load_bundled_tiny_clip, load_image_caption_dataset
from trainer.losses import clip_loss

COMMON = dict(learning_rate=1e-5, weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant",
              optim="adamw_torch", save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
              logging_steps=100000, dataloader_num_workers=0, dataloader_drop_last=True, seed=0)


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step: `compute` from step begin to step end (the batch already loaded) and
    `total` from one step's end to the next (data loading included)."""

    def __init__(self):
        self.compute, self.total, self._begin, self._last_end = [], [], None, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.compute.append(now - self._begin)
        if self._last_end is not None:
            self.total.append(now - self._last_end)
        self._last_end = now


def median_after(values, warmup):
    return statistics.median(values[warmup:]) if len(values) > warmup else float("nan")


def rows_dataset(num_rows):
    dataset = load_image_caption_dataset()
    repeats = -(-num_rows // len(dataset))
    return datasets.concatenate_datasets([dataset] * repeats).select(range(num_rows))


def run_bare(clip, batch, steps, warmup):
    model = GCLModel.from_backbone(copy.deepcopy(clip)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, foreach=True)
    times = []
    for _ in range(steps + warmup):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch)
        loss, _ = clip_loss(out.image_embeds, out.text_embeds, 1.0 / out.logit_scale)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return median_after(times, warmup)


def run_gcl(clip, processor, dataset, batch, batch_size, steps, warmup, fixed, output_dir):
    model = GCLModel.from_backbone(copy.deepcopy(clip)).train()
    collator = (lambda rows: dict(batch)) if fixed else GCLCollator(processor)
    args = GCLTrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch_size,
                                max_steps=steps + warmup, loss="clip", **COMMON)
    timer = StepTimer()
    trainer = GCLTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    return median_after(timer.compute if fixed else timer.total, warmup)


def run_st(clip_dir, dataset, batch_size, steps, warmup, output_dir):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesSymmetricRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

    model = SentenceTransformer(modules=[Transformer(clip_dir), Normalize()], device="cpu")
    pairs = dataset.select_columns(["image", "caption"]).cast_column("image", datasets.Image())
    args = SentenceTransformerTrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch_size,
                                                max_steps=steps + warmup, **COMMON)
    timer = StepTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MultipleNegativesSymmetricRankingLoss is deprecated in favour of an option
        loss = MultipleNegativesSymmetricRankingLoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss, callbacks=[timer])
    trainer.train()
    return median_after(timer.total, warmup), median_after(timer.compute, warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, in alternating order")
    args = parser.parse_args()
    torch.manual_seed(0)
    clip, processor = load_bundled_tiny_clip(0)
    dataset = rows_dataset(args.batch_size * (args.steps + args.warmup))
    batch = GCLCollator(processor)([dataset[i] for i in range(args.batch_size)])
    results = {"bare": [], "gcl_fixed": [], "gcl": [], "st": [], "st_compute": []}
    with tempfile.TemporaryDirectory() as tmp:
        clip.save_pretrained(f"{tmp}/clip")
        CLIPProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer).save_pretrained(
            f"{tmp}/clip")
        for round_index in range(args.rounds):
            order = ["bare", "gcl_fixed", "gcl", "st"]
            for name in order if round_index % 2 == 0 else order[::-1]:
                if name == "bare":
                    results["bare"].append(run_bare(clip, batch, args.steps, args.warmup))
                elif name == "st":
                    total, compute = run_st(f"{tmp}/clip", dataset, args.batch_size, args.steps, args.warmup,
                                            f"{tmp}/st")
                    results["st"].append(total)
                    results["st_compute"].append(compute)
                else:
                    results[name].append(run_gcl(clip, processor, dataset, batch, args.batch_size, args.steps,
                                                 args.warmup, name == "gcl_fixed", f"{tmp}/gcl"))
    medians = {key: statistics.median(values) for key, values in results.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, median seconds per step")
    for key in ("bare", "gcl_fixed", "gcl", "st", "st_compute"):
        print(f"  {key:<11} {medians[key]:8.4f}   (runs: {', '.join(f'{v:.4f}' for v in results[key])})")
    print(f"gcl_fixed / bare = {medians['gcl_fixed'] / medians['bare']:.3f}   (target <= 1.05)")
    print(f"gcl / st         = {medians['gcl'] / medians['st']:.3f}   (target <= 1.0)")


if __name__ == "__main__":
    main()
