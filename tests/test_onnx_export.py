"""gcl-export-onnx: tiny CLIP (fusion `sum` and learnable `attention`) and VISTA models exported through the CLI, the
graphs checked with onnxruntime against the PyTorch model on bundled-sample images and captions, the manifest, the
`GCLOnnxRetriever` runtime, the other fusion modes, and the failures: bad paths, a missing onnxruntime, a mismatch."""

import contextlib
import copy
import functools
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

import modeling_gcl  # noqa: F401  (Auto registration)
import trainer.onnx.export as export_onnx_module  # export_onnx() looks these helpers up here
from modeling_gcl import GCLModel, GCLProcessor, GCLScoreFusion, l2_normalize
from trainer.atomic import STAGING_PREFIX
from trainer.data import BUNDLED_SAMPLE_DIR, BUNDLED_TINY_CLIP_DIR
from trainer.onnx import (
    MANIFEST_FILE,
    GCLOnnxRetriever,
    OnnxDependencyError,
    OnnxVerificationError,
    ScoreFusionGraph,
    export_graph,
    load_sample_pairs,
    main,
    verify_export,
)
from trainer.onnx.common import INSTALL_HINT

from .conftest import tiny_vista_gcl

REPO_ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4
# Rows of the bundled sample for these checks: none of them is one the CLI traced with (0-1) or verified with (2-5).
ROWS = {1: [10], 3: [11, 12, 13]}
ONNX_SKIP_REASON = "the ONNX export needs the onnx extra: pip install -e '.[onnx]'"


def require_onnx():
    """Skip (with the install hint) when the exporter or the runtime is missing; returns onnxruntime."""
    pytest.importorskip("onnx", reason=ONNX_SKIP_REASON)
    pytest.importorskip("onnxscript", reason=ONNX_SKIP_REASON)
    return pytest.importorskip("onnxruntime", reason=ONNX_SKIP_REASON)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` with its stdout and stderr captured (module fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Exported:
    model: GCLModel
    processor: GCLProcessor
    model_dir: Path
    output_dir: Path
    stdout: str

    @functools.cached_property
    def retriever(self) -> GCLOnnxRetriever:
        return GCLOnnxRetriever.from_pretrained(self.output_dir)


def save_and_export(model: GCLModel, processor: GCLProcessor, root: Path) -> Exported:
    model.eval().save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    code, stdout, stderr = run_cli([str(root / "model"), "--output_dir", str(root / "onnx")])
    assert code == 0, stderr
    return Exported(model, processor, root / "model", root / "onnx", stdout)


def tiny_clip_processor(image_size: int | None = None) -> GCLProcessor:
    processor = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    if image_size is not None:
        processor.image_processor.size = {"shortest_edge": image_size}
        processor.image_processor.crop_size = {"height": image_size, "width": image_size}
    return processor


def tiny_clip_gcl(fusion: str, seed: int) -> GCLModel:
    """A GCL model on the bundled tiny CLIP config (width 128, 64 px, CLIP's vocabulary), randomly initialised as
    `load_bundled_tiny_clip` does, cut to one layer per tower: the export time grows with the layers, and a stack of
    identical layers exports no operator that one layer does not."""
    config = CLIPConfig.from_pretrained(BUNDLED_TINY_CLIP_DIR)
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 1
    torch.manual_seed(seed)
    return GCLModel.from_backbone(CLIPModel._from_config(config), fusion=fusion)




@pytest.fixture(scope="module")
def vista_export_process(tmp_path_factory):
    """Start the VISTA export in a second process (`python -m trainer.onnx`, the same `main`) so it runs on the
    second core while this one exports the CLIP models: the exports are most of this file's time."""
    require_onnx()
    root = tmp_path_factory.mktemp("vista")
    model, processor = tiny_vista_gcl(), tiny_clip_processor(32)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    command = [sys.executable, "-m", "trainer.onnx", str(root / "model"), "--output_dir", str(root / "onnx")]
    # Output to files, not pipes: a pipe nobody reads until the end could fill and stall the export.
    with open(root / "stdout.txt", "w") as stdout, open(root / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stdout, stderr=stderr)
    yield model, processor, root, process
    if process.poll() is None:  # a test failed before the export was awaited
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def clip_sum(tmp_path_factory, vista_export_process) -> Exported:
    """Score fusion `sum` (CLIP-SF): normalize(image projection + text projection)."""
    require_onnx()
    return save_and_export(tiny_clip_gcl("sum", seed=0), tiny_clip_processor(), tmp_path_factory.mktemp("clip_sum"))


@pytest.fixture(scope="module")
def clip_attention(tmp_path_factory, vista_export_process) -> Exported:
    """Learnable attention pooling, with non-zero weights so that it differs from `sum`."""
    require_onnx()
    model = tiny_clip_gcl("attention", seed=1)
    with torch.no_grad():
        model.fusion.score_weight.normal_(std=2.0)
        model.fusion.score_bias.copy_(torch.tensor([0.4, -0.3]))
    return save_and_export(model, tiny_clip_processor(), tmp_path_factory.mktemp("clip_attention"))


@pytest.fixture(scope="module")
def vista(vista_export_process) -> Exported:
    model, processor, root, process = vista_export_process
    code = process.wait(timeout=240)
    assert code == 0, (root / "stderr.txt").read_text()[-3000:]
    return Exported(model, processor, root / "model", root / "onnx", (root / "stdout.txt").read_text())


EXPORTS = ["clip_sum", "clip_attention", "vista"]


@pytest.fixture(params=EXPORTS)
def exported(request) -> Exported:
    return request.getfixturevalue(request.param)


def sample_inputs(processor: GCLProcessor, batch_size: int) -> tuple[list, list[str], dict[str, torch.Tensor]]:
    images, captions = load_sample_pairs(ROWS[batch_size])
    inputs = processor(images=images, text=captions, padding=True, truncation=True,
                       max_length=processor.max_text_length, return_tensors="pt")
    return images, captions, {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")}


@torch.no_grad()
def reference(model: GCLModel, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    pixel_values, input_ids, attention_mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    return {
        "image_embeds": model.get_image_features(pixel_values).numpy(),
        "image_features": model.get_image_features(pixel_values, normalize=False).numpy(),
        "text_embeds": model.get_text_features(input_ids, attention_mask).numpy(),
        "text_features": model.get_text_features(input_ids, attention_mask, normalize=False).numpy(),
        "fused_embeds": model.get_fused_features(pixel_values, input_ids, attention_mask).numpy(),
    }


def test_onnxruntime_embeddings_match_pytorch(exported):
    """The graphs, loaded with plain onnxruntime sessions, give the PyTorch model's embeddings (atol 1e-4) on sample
    images and captions at batch sizes 1 and 3 (the CLI traced with 2), with texts of other lengths (and padding)."""
    onnxruntime = require_onnx()
    fused_file = "fused_encoder.onnx" if exported.model.is_vista else "fusion.onnx"
    assert not (exported.output_dir / ("fusion.onnx" if exported.model.is_vista else "fused_encoder.onnx")).exists()
    sessions = {name: onnxruntime.InferenceSession(str(exported.output_dir / name), providers=["CPUExecutionProvider"])
                for name in ("image_encoder.onnx", "text_encoder.onnx", fused_file)}

    def run(name, **feeds):
        names = [output.name for output in sessions[name].get_outputs()]
        return dict(zip(names, sessions[name].run(names, {key: value.numpy() for key, value in feeds.items()})))

    for batch_size in (1, 3):
        _, _, inputs = sample_inputs(exported.processor, batch_size)
        if batch_size > 1:
            assert (inputs["attention_mask"] == 0).any()  # padding is exercised
        expected = reference(exported.model, inputs)
        image = run("image_encoder.onnx", pixel_values=inputs["pixel_values"])
        text = run("text_encoder.onnx", input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        if exported.model.is_vista:
            fused = run(fused_file, **inputs)
        else:
            fused = run(fused_file, image_features=torch.from_numpy(image["image_features"]),
                        text_features=torch.from_numpy(text["text_features"]))
        actual = {**image, **text, **fused}
        assert set(actual) == set(expected)
        for key, value in expected.items():
            assert actual[key].shape == (batch_size, exported.model.config.projection_dim), key
            # Raw projections are not unit vectors: compare them relative to their size as well.
            np.testing.assert_allclose(actual[key], value, atol=ATOL, rtol=0 if key.endswith("embeds") else ATOL,
                                       err_msg=f"{key}, batch size {batch_size}")


def test_manifest_describes_the_export(exported):
    onnx = pytest.importorskip("onnx", reason=ONNX_SKIP_REASON)
    manifest = json.loads((exported.output_dir / MANIFEST_FILE).read_text())
    config = exported.model.config
    assert manifest["format"] == "gcl-onnx" and manifest["format_version"] == 1
    assert manifest["source"] == str(exported.model_dir.resolve())
    assert manifest["backbone_type"] == config.backbone_type
    assert manifest["fusion"] == config.fusion  # sum, attention or (VISTA) tokens
    assert manifest["projection_dim"] == config.projection_dim
    assert manifest["opset"] == 18 and manifest["dtype"] == "float32"
    # Exactly the files in the folder (graphs, processor, manifest), nothing half-written beside it.
    assert sorted(manifest["files"]) == sorted(p.name for p in exported.output_dir.iterdir())
    assert not list(exported.output_dir.parent.glob(f"{STAGING_PREFIX}*"))
    assert {"processor_config.json", "tokenizer.json"} <= set(manifest["files"])
    fused_file = "fused_encoder.onnx" if exported.model.is_vista else "fusion.onnx"
    graphs = manifest["graphs"]
    assert [graphs[role]["file"] for role in ("image", "text", "fused")] == ["image_encoder.onnx", "text_encoder.onnx",
                                                                           fused_file]
    size = exported.processor.image_processor.crop_size["height"]
    dim = config.projection_dim
    assert graphs["image"]["inputs"] == {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, size, size]}}
    assert graphs["image"]["outputs"] == {name: {"dtype": "float32", "shape": ["batch", dim]}
                                          for name in ("image_embeds", "image_features")}
    tokens = {"dtype": "int64", "shape": ["batch", "sequence"]}
    assert graphs["text"]["inputs"] == {"input_ids": tokens, "attention_mask": tokens}
    assert list(graphs["text"]["outputs"]) == ["text_embeds", "text_features"]
    assert list(graphs["fused"]["outputs"]) == ["fused_embeds"]
    fused_inputs = ["pixel_values", "input_ids", "attention_mask"] if exported.model.is_vista else ["image_features",
                                                                                                 "text_features"]
    assert list(graphs["fused"]["inputs"]) == fused_inputs
    for graph in graphs.values():
        model_proto = onnx.load(str(exported.output_dir / graph["file"]))
        assert {entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx")} == {18}
        assert graph["external_data"] is None  # small models: weights inside the file
    verification = manifest["verification"]
    assert verification["batch_sizes"] == [1, 3] and verification["atol"] == ATOL
    assert set(verification["max_abs_diff"]) == {"image", "text", "fused"}
    for role, difference in verification["max_abs_diff"].items():
        assert 0 <= difference <= ATOL
        # The CLI prints the difference of every encoder.
        assert f"verify {role} " in exported.stdout and f"max |onnx - torch| = {difference:.3g}" in exported.stdout


def test_retriever_gives_the_pytorch_embeddings(exported):
    """`GCLOnnxRetriever` (saved processor + onnxruntime, no PyTorch model) embeds PIL images / image paths and strings
    as the PyTorch model does, at batch sizes 1 and 3."""
    require_onnx()
    retriever = exported.retriever
    assert retriever.projection_dim == exported.model.config.projection_dim
    assert retriever.is_vista == exported.model.is_vista
    rows = [json.loads(line) for line in (BUNDLED_SAMPLE_DIR / "metadata.jsonl").read_text().splitlines()]
    for batch_size in (1, 3):
        images, captions, inputs = sample_inputs(exported.processor, batch_size)
        expected = reference(exported.model, inputs)
        paths = [str(BUNDLED_SAMPLE_DIR / rows[row]["file_name"]) for row in ROWS[batch_size]]
        results = {
            "image_embeds": retriever.get_image_features(images),
            "text_embeds": retriever.get_text_features(captions),
            "fused_embeds": retriever.get_fused_features(paths, captions),
        }
        for key, value in results.items():
            assert value.dtype == np.float32 and value.shape == (batch_size, retriever.projection_dim), key
            np.testing.assert_allclose(value, expected[key], atol=ATOL, rtol=0,
                                       err_msg=f"{key}, batch size {batch_size}")
            np.testing.assert_allclose(np.linalg.norm(value, axis=-1), 1.0, atol=1e-5)
    # A single string or image is a batch of one.
    np.testing.assert_allclose(retriever.get_text_features(captions[0]), expected["text_embeds"][:1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(retriever.get_image_features(paths[0]), expected["image_embeds"][:1], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="pairs image j with text j"):
        retriever.get_fused_features(images, captions + ["one caption too many"])


def test_learnable_attention_pooling_is_exported_not_the_sum(clip_attention):
    """The attention export is not a plain sum: its fused embedding differs from normalize(image + text) features."""
    require_onnx()
    _, captions, inputs = sample_inputs(clip_attention.processor, 3)
    retriever = clip_attention.retriever
    image = retriever.run_image(inputs["pixel_values"].numpy())["image_features"]
    text = retriever.run_text(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy())["text_features"]
    summed = l2_normalize(torch.from_numpy(image + text)).numpy()
    fused = retriever.run_fused(inputs["pixel_values"].numpy(), inputs["input_ids"].numpy(),
                                inputs["attention_mask"].numpy())
    assert np.abs(fused - summed).max() > 1e-3


@pytest.mark.parametrize("mode", ["normalized_sum", "mean"])
def test_other_fusion_modes_export(mode, tmp_path):
    """The fusion graph of the modes not exported through the CLI above, at batch sizes 1 and 3."""
    onnxruntime = require_onnx()
    fusion = GCLScoreFusion(mode, 16).eval()
    generator = torch.Generator().manual_seed(0)
    example = {"image_features": torch.randn(2, 16, generator=generator) * 3,
               "text_features": torch.randn(2, 16, generator=generator)}
    path = export_graph(ScoreFusionGraph(fusion), example, tmp_path / "fusion.onnx", ["fused_embeds"],
                        {"image_features": {0: "batch"}, "text_features": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        image = torch.randn(batch_size, 16, generator=generator) * 3
        text = torch.randn(batch_size, 16, generator=generator)
        (actual,) = session.run(None, {"image_features": image.numpy(), "text_features": text.numpy()})
        with torch.no_grad():
            expected = l2_normalize(fusion(image, text)).numpy()
        np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)


def test_a_mismatch_fails_the_verification_and_names_the_encoders(clip_sum):
    """Verification compares with the model it is given: text weights that drifted fail `text` and `fused`, not
    `image`."""
    require_onnx()
    drifted = copy.deepcopy(clip_sum.model)
    with torch.no_grad():
        weight = drifted.encoder.text_projection.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    lines = []
    with pytest.raises(OnnxVerificationError, match=r"text .*fused") as error:
        verify_export(drifted, clip_sum.output_dir, log=lines.append)
    assert "image" not in str(error.value).split("(")[1]
    assert any("verify image" in line and line.endswith("ok") for line in lines)
    assert any("verify text" in line and line.endswith("MISMATCH") for line in lines)


# --- failures: nothing is published -----------------------------------------------------------------------------------

def stub_exporter(monkeypatch, fail_verification: bool):
    """Replace the (slow) exporter by one writing placeholder graphs, and the verification by a pass or a failure, to
    test what is published around them."""
    def fake_export_graph(module, example_inputs, path, output_names, dynamic_shapes, opset):
        Path(path).write_bytes(b"placeholder")
        return Path(path)

    def fake_describe_graph(path):
        return {"opset": 18, "inputs": {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, 32, 32]},
                                        "input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
                                        "attention_mask": {"dtype": "int64", "shape": ["batch", "sequence"]},
                                        "image_features": {"dtype": "float32", "shape": ["batch", 24]},
                                        "text_features": {"dtype": "float32", "shape": ["batch", 24]}},
                "outputs": {}}

    def fake_verify_export(model, directory, atol, log):
        assert (Path(directory) / MANIFEST_FILE).is_file()  # verification sees the complete folder
        if fail_verification:
            raise OnnxVerificationError("The ONNX embeddings differ (text 0.5).")
        return {"image": 0.0, "text": 0.0, "fused": 0.0}

    monkeypatch.setattr(export_onnx_module, "export_graph", fake_export_graph)
    monkeypatch.setattr(export_onnx_module, "describe_graph", fake_describe_graph)
    monkeypatch.setattr(export_onnx_module, "verify_export", fake_verify_export)


@pytest.fixture
def small_model_dir(small_gcl_model, processor, tmp_path) -> Path:
    small_gcl_model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_a_failed_verification_publishes_nothing_and_keeps_an_earlier_export(small_model_dir, monkeypatch, capsys):
    require_onnx()
    stub_exporter(monkeypatch, fail_verification=True)
    output_dir = small_model_dir.parent / "onnx"
    assert main([str(small_model_dir), "--output_dir", str(output_dir)]) == 1
    err = capsys.readouterr().err
    assert "differ" in err and "Nothing was published" in err
    assert not output_dir.exists()
    assert not list(output_dir.parent.glob(f"{STAGING_PREFIX}*"))
    # An earlier export stays as it was when its replacement fails.
    output_dir.mkdir()
    (output_dir / MANIFEST_FILE).write_text('{"format": "gcl-onnx", "earlier": true}')
    (output_dir / "image_encoder.onnx").write_bytes(b"earlier graph")
    assert main([str(small_model_dir), "--output_dir", str(output_dir), "--overwrite"]) == 1
    assert sorted(p.name for p in output_dir.iterdir()) == ["gcl_onnx.json", "image_encoder.onnx"]
    assert json.loads((output_dir / MANIFEST_FILE).read_text())["earlier"] is True
    assert not list(output_dir.parent.glob(f"{STAGING_PREFIX}*"))


def test_no_verify_publishes_and_records_it(small_model_dir, monkeypatch, capsys):
    require_onnx()
    stub_exporter(monkeypatch, fail_verification=True)  # would fail, but is not run
    output_dir = small_model_dir.parent / "onnx"
    output_dir.mkdir()  # an empty folder holds nothing to lose: no --overwrite needed
    assert main([str(small_model_dir), "--output_dir", str(output_dir), "--no_verify"]) == 0
    assert "--no_verify" in capsys.readouterr().out
    manifest = json.loads((output_dir / MANIFEST_FILE).read_text())
    assert manifest["verification"] is None and manifest["fusion"] == "sum"
    assert sorted(manifest["files"]) == sorted(p.name for p in output_dir.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert output_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # the usual folder permissions, not mkdtemp's 0o700


# --- bad input (no ONNX package needed: paths are checked first) ------------------------------------------------------

def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert main([str(missing), "--output_dir", str(tmp_path / "onnx")]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "no such model directory" in err
    assert not (tmp_path / "onnx").exists()


def test_a_folder_that_is_not_a_gcl_model_is_a_clear_error(tmp_path, small_clip, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--output_dir", str(tmp_path / "onnx")]) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "no config.json" in err
    small_clip.save_pretrained(tmp_path / "clip")  # a plain CLIP checkpoint, not wrapped as GCL
    assert main([str(tmp_path / "clip"), "--output_dir", str(tmp_path / "onnx")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "clip") in err and "is not a GCL model" in err and "'clip'" in err
    assert not (tmp_path / "onnx").exists()


def test_an_existing_output_dir_is_kept_unless_it_is_an_earlier_export(small_model_dir, capsys):
    other = small_model_dir.parent / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main([str(small_model_dir), "--output_dir", str(other)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(small_model_dir), "--output_dir", str(other), "--overwrite"]) == 1
    assert "not a gcl-export-onnx output" in capsys.readouterr().err
    assert main([str(small_model_dir), "--output_dir", str(small_model_dir.parent), "--overwrite"]) == 1
    assert "would replace the model" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine" and (small_model_dir / "config.json").is_file()


def test_missing_onnxruntime_gives_the_install_hint(small_model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    output_dir = small_model_dir.parent / "onnx"
    assert main([str(small_model_dir), "--output_dir", str(output_dir)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime" in err and INSTALL_HINT in err
    assert not output_dir.exists()
    output_dir.mkdir()
    (output_dir / MANIFEST_FILE).write_text("{}")
    with pytest.raises(OnnxDependencyError, match=r"pip install onnx onnxruntime onnxscript"):
        GCLOnnxRetriever.from_pretrained(output_dir)


def test_bad_options_are_refused(small_model_dir, capsys):
    for option in (["--opset", "17"], ["--atol", "-1"]):
        assert main([str(small_model_dir), "--output_dir", str(small_model_dir.parent / "onnx"), *option]) == 1
        assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: only cpu
        main([str(small_model_dir), "--output_dir", str(small_model_dir.parent / "onnx"), "--device", "cuda"])
    shutil.rmtree(small_model_dir.parent / "onnx", ignore_errors=True)
