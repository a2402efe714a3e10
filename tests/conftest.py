import os
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

import modeling_gcl  # noqa: F401  (Auto registration)
from modeling_gcl import GCLConfig, GCLModel, GCLProcessor
from trainer.data import BUNDLED_SAMPLE_DIR, BUNDLED_TINY_CLIP_DIR, load_image_caption_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
OPENCLIPART_DIR = SHARED_DIR / "data" / "openclipart"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# gcl-train without --model_name_or_path trains the pretrained EfficientNet-Lite0 + MiniLM dual encoder (minutes); the
# suite's runs without one train the bundled tiny CLIP (seconds). tests/test_dual_encoder.py runs the real default.
os.environ.setdefault("GCL_TRAIN_DEFAULT_MODEL", "tiny-clip")

# The start of a script that must run where this library cannot be imported: run it with `python -I -S` (no
# PYTHONPATH, no user site, no .pth files, so not the editable install) and format it with `site_packages`.
LIBRARY_FREE_PREAMBLE = textwrap.dedent(
    """
    import sys
    sys.path.append({site_packages!r})  # the venv's packages, without the .pth files that put this library on the path
    for name in ("modeling_gcl", "hub_cards", "trainer"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{{name}} is importable: the environment is not isolated from the library")
    """
)

requires_openclipart = pytest.mark.skipif(
    not (OPENCLIPART_DIR / "metadata.jsonl").exists(),
    reason="needs ../shared/data/openclipart (the 1,807-pair set beside the repository; CI has it)",
)


def small_clip_config(**overrides) -> CLIPConfig:
    """A CLIP small enough for unit tests, with the real CLIP vocabulary (the bundled tokenizer)."""
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24, **overrides)


def make_small_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel._from_config(small_clip_config(), attn_implementation="sdpa")


@pytest.fixture
def small_clip() -> CLIPModel:
    return make_small_clip().eval()


@pytest.fixture
def small_gcl_model(small_clip) -> GCLModel:
    return GCLModel.from_backbone(small_clip).eval()


@pytest.fixture(scope="session")
def processor() -> GCLProcessor:
    """The bundled CLIP tokenizer with a 32-px image processor (matching `small_clip_config`)."""
    base = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    base.image_processor.size = {"shortest_edge": 32}
    base.image_processor.crop_size = {"height": 32, "width": 32}
    return base


@pytest.fixture(scope="session")
def sample_dataset():
    return load_image_caption_dataset(BUNDLED_SAMPLE_DIR)


@pytest.fixture
def sample_batch(processor, sample_dataset):
    from trainer.data import GCLCollator

    rows = [sample_dataset[i] for i in range(6)]
    return GCLCollator(processor)(rows)


def tiny_vista_gcl() -> GCLModel:
    """A tiny VISTA (one BERT layer, one EVA02 block, 32 px) shared by the Hub and ONNX tests; CLIP's tokenizer stands in for BERT's with
    its [CLS]/[SEP] ids."""
    torch.manual_seed(11)
    text = dict(model_type="bert", vocab_size=49408, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=128)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, rope_pretrain_grid=4)
    config = GCLConfig(backbone_type="vista", vista_config=dict(text_config=text, vision_config=vision,
                                                                 cls_token_id=49406, sep_token_id=49407))
    return GCLModel(config).eval()
