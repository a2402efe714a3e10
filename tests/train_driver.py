"""A small, deterministic GCL training run for the crash/resume tests, executed in a subprocess so that it can be
killed for real (SIGKILL).

    python -m tests.train_driver OUTPUT_DIR [--resume] [--hang_in_save_at STEP]

Writes OUTPUT_DIR/losses.json ({step: exact loss} for the steps this process ran) at the end. With --hang_in_save_at, the save of that step stops midway
(model and optimizer written, trainer state not yet), creates OUTPUT_DIR/hanging and sleeps until killed.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

MAX_STEPS, SAVE_STEPS, BATCH_SIZE = 6, 2, 8


def build_trainer(output_dir: str, hang_in_save_at: int | None):
    from modeling_gcl import GCLModel, GCLProcessor
    from trainer import GCLTrainer, GCLTrainingArguments
    from trainer.data import BUNDLED_TINY_CLIP_DIR, load_image_caption_dataset

    from .conftest import make_small_clip

    class HangingTrainer(GCLTrainer):
        step_losses = {}  # training step -> the exact (unrounded) loss it computed

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.step_losses[self.state.global_step + 1] = (loss[0] if return_outputs else loss).item()
            return loss

        def _save_optimizer_and_scheduler(self, output_dir):
            super()._save_optimizer_and_scheduler(output_dir)
            if self.state.global_step == hang_in_save_at:
                Path(self.args.output_dir, "hanging").touch()
                time.sleep(600)

    processor = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    processor.image_processor.size = {"shortest_edge": 32}
    processor.image_processor.crop_size = {"height": 32, "width": 32}
    dataset = load_image_caption_dataset().select(range(64))
    model = GCLModel.from_backbone(make_small_clip(seed=0))
    args = GCLTrainingArguments(
        output_dir=output_dir, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, save_strategy="steps", logging_steps=1,
        per_device_train_batch_size=BATCH_SIZE, learning_rate=1e-3, warmup_steps=0, seed=0, report_to="none",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    return HangingTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang_in_save_at", type=int, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    trainer = build_trainer(args.output_dir, args.hang_in_save_at)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    Path(args.output_dir, "losses.json").write_text(json.dumps(trainer.step_losses))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
