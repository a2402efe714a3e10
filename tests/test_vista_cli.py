"""`gcl-train` on a VISTA directory, with VISTA's first-stage recipe (text tower frozen)."""

import pytest
import torch
from safetensors.torch import load_file

from modeling_gcl import GCLModel, GCLProcessor
from trainer.cli import run

from .test_vista import MINILM_DIR, SMALL_EVA, requires_minilm


@pytest.mark.slow  # MiniLM runs three times per step
@requires_minilm
def test_gcl_train_on_a_vista_directory_with_the_text_tower_frozen(tmp_path):
    torch.manual_seed(0)
    start = tmp_path / "vista-start"
    GCLModel.from_vista_backbone(str(MINILM_DIR), vision_config=SMALL_EVA).save_pretrained(start)
    GCLProcessor.for_vista(str(MINILM_DIR), image_size=32, num_image_tokens=16).save_pretrained(start)
    out = tmp_path / "out"
    results = run(["--model_name_or_path", str(start), "--freeze_towers", "text", "--max_steps", "2",
                   "--per_device_train_batch_size", "4", "--max_train_samples", "16", "--eval_holdout", "8",
                   "--max_caption_length", "16", "--learning_rate", "1e-3", "--save_strategy", "no",
                   "--disable_tqdm", "true", "--report_to", "none", "--output_dir", str(out)])
    assert results["train"]["train_loss"] > 0 and set(results["after"]) >= {"t2i", "i2it", "it2t"}
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    text = [k for k in before if k.startswith("encoder.text_model.")]
    vision = [k for k in before if k.startswith("encoder.vision_model.") or k.startswith("encoder.visual_proj")]
    assert text and vision
    assert all(torch.equal(before[k], after[k]) for k in text)          # frozen
    assert any(not torch.equal(before[k], after[k]) for k in vision)    # trained
    reloaded = GCLModel.from_pretrained(out)
    assert reloaded.config.backbone_type == "vista" and reloaded.config.fusion == "tokens"
