# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GCL model configuration.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code beside
`modeling_gcl.py` and `processing_gcl.py`.
"""

from dataclasses import field

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_dual_encoder import GCLDualEncoderConfig
from .configuration_vista import GCLEvaVisionConfig, GCLVistaConfig

# The six ordered pairs of different modalities of GCL (paper Eq. 2), named `<anchor>2<positive>`.
MODALITIES = ("i", "t", "it")
ALL_LOSS_PAIRS = ("i2t", "i2it", "t2i", "t2it", "it2i", "it2t")

# How the image and text vectors of a score-fusion backbone (CLIP, TinyCLIP, UniIR CLIP-SF) become one.
FUSION_MODES = ("sum", "normalized_sum", "mean", "attention")

# Backbones the model can wrap: the `model_type` of `encoder_config`.
SUPPORTED_ENCODERS = ("clip",)

# `backbone_type`: "clip" wraps a CLIPModel (`encoder_config`, score fusion); "vista" is BAAI's Visualized-BGE
# (`vista_config`), whose fused embedding comes from image tokens fed into the text encoder; "dual_encoder" is any
# vision tower plus a BERT-family text tower with learned projections (`dual_encoder_config`), fused as CLIP is.
BACKBONE_TYPES = ("clip", "vista", "dual_encoder")
# The only fusion of a VISTA backbone: image tokens inside the text encoder's sequence.
TOKEN_FUSION = "tokens"
# VISTA trains with a fixed temperature of 0.02 (FlagEmbedding's Visualized-BGE).
VISTA_TEMPERATURE = 0.02


def split_pair(name: str) -> tuple[str, str]:
    """`"t2it"` -> `("t", "it")`; raises `ValueError` on an unknown name."""
    if name not in ALL_LOSS_PAIRS:
        raise ValueError(f"Unknown loss pair {name!r}; expected some of {', '.join(ALL_LOSS_PAIRS)}.")
    anchor, positive = name.split("2")
    return anchor, positive


def check_loss_modalities(modalities, pairs) -> list[str]:
    """Validate the modalities a GCL softmax spans: known, unique, and covering both ends of every pair."""
    modalities = list(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"loss_modalities must be distinct values from {', '.join(MODALITIES)}; got {modalities}.")
    for name in pairs:
        missing = [m for m in split_pair(name) if m not in modalities]
        if missing:
            raise ValueError(f"loss pair {name!r} needs modality {missing[0]!r} in loss_modalities {modalities}.")
    return [m for m in MODALITIES if m in modalities]  # canonical order: the logits' block layout relies on it


class GCLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`GCLModel`]: a multimodal retriever that embeds images, texts and fused image+text
    items into one space and is trained with Generalized Contrastive Learning (Lee et al., NeurIPS 2025).

    Args:
        backbone_type (`str`, *optional*, defaults to `"clip"`):
            `"clip"`: a `CLIPModel` described by `encoder_config`. `"vista"`: BAAI's Visualized-BGE (a BERT-family text
            encoder and an EVA02-CLIP vision tower) described by `vista_config`.
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the wrapped CLIP backbone. A `CLIPConfig` (also TinyCLIP and UniIR CLIP-SF, which share
            its layout); defaults to `CLIPConfig()` when `backbone_type="clip"`, unused (`None`) for VISTA.
        vista_config (`dict` or [`GCLVistaConfig`], *optional*):
            The VISTA backbone (`text_config`, `vision_config`); defaults to the sizes of Visualized_base_en_v1.5 when
            `backbone_type="vista"`, `None` otherwise.
        dual_encoder_config (`dict` or [`GCLDualEncoderConfig`], *optional*):
            The dual-encoder backbone (`vision_config`, `text_config`, `projection_dim`, `text_pooling`) when
            `backbone_type="dual_encoder"` (default: EfficientNet-Lite0 + BERT-base sizes), `None` otherwise. Fused
            like CLIP (`fusion`); its logit scale starts at CLIP's log(1/0.07) unless `temperature` is given.
        fusion (`str`, *optional*, defaults to `"sum"` for CLIP, `"tokens"` for VISTA):
            How a fused image+text embedding is made. VISTA only has `"tokens"`: the image's patch tokens are inserted
            after the text's [CLS] and the joint sequence runs through the text encoder. For CLIP it is pooled from
            the two projected vectors:
            - `"sum"`: CLIP-SF / UniIR score fusion, the *unnormalised* projections summed, then L2-normalised.
            - `"normalized_sum"`: each projection L2-normalised, summed, then L2-normalised.
            - `"mean"`: the mean of the unnormalised projections. After the final L2 normalisation this points the
              same way as `"sum"`; it exists so configurations that name it load and behave as expected.
            - `"attention"`: learnable attention pooling over the two vectors (a linear score per vector, softmax
              over the two, weighted sum of the unnormalised projections). Zero-initialised, so an untrained
              pooling equals `"sum"` exactly.
        temperature (`float`, *optional*):
            Fixed softmax temperature τ. `None` keeps the backbone's own learnable `logit_scale` (CLIP) and means
            τ = 0.02 for VISTA. When set, the logit scale is initialised to `log(1/τ)`.
        learnable_temperature (`bool`, *optional*, defaults to `True` for CLIP, `False` for VISTA):
            Whether the logit scale is trained. `False` freezes it (VISTA's fixed τ = 0.02).
        max_logit_scale (`float`, *optional*, defaults to 100.0):
            Upper bound applied to `exp(logit_scale)` when it is used, as CLIP clamps it.
        loss_pairs (`list[str]`, *optional*):
            The ordered modality pairs whose positives the GCL loss counts, from `i2t, i2it, t2i, t2it, it2i, it2t`
            (all six by default). The softmax denominator always spans all 3N items.
        loss_weights (`list[float]`, *optional*):
            One weight per entry of `loss_pairs` (all 1.0 by default). The loss is the weighted mean of the terms.
        exclude_other_positive (`bool`, *optional*, defaults to `False`):
            Drop the anchor's *other* positive from the denominator of each term. The paper's Eq. 2 keeps it.
        loss_modalities (`list[str]`, *optional*):
            The modalities whose items the GCL softmax spans (all of `i, t, it` by default, as Eq. 2). `["i", "t"]`
            with `loss_pairs=["i2t", "t2i"]` is CL plus intra-modality separation: the 2N × 2N image–text matrix,
            other images and other texts as negatives.
        sigmoid_bias_init (`float`, *optional*):
            Initial value of the learnable logit bias `b` of the sigmoid GCL loss (SigLIP's `b`, which starts at -10).
            `None` (the default): the model has no `logit_bias` parameter.
    """

    model_type = "gcl"
    # Both optional: only the sub-config of the chosen `backbone_type` is built (see `__post_init__`).
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="clip", optional=True),
        "vista_config": SubConfigSpec(config_class=GCLVistaConfig, optional=True),
        "dual_encoder_config": SubConfigSpec(config_class=GCLDualEncoderConfig, optional=True),
    }

    backbone_type: str = "clip"
    encoder_config: PreTrainedConfig | dict | None = None
    vista_config: GCLVistaConfig | dict | None = None
    dual_encoder_config: GCLDualEncoderConfig | dict | None = None
    fusion: str | None = None
    temperature: float | None = None
    learnable_temperature: bool | None = None
    max_logit_scale: float = 100.0
    loss_pairs: list[str] = field(default_factory=lambda: list(ALL_LOSS_PAIRS))
    loss_weights: list[float] | None = None
    exclude_other_positive: bool = False
    loss_modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    sigmoid_bias_init: float | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.backbone_type not in BACKBONE_TYPES:
            raise ValueError(
                f"GCLConfig: backbone_type {self.backbone_type!r} is not one of {', '.join(BACKBONE_TYPES)}."
            )
        if self.backbone_type != "dual_encoder" and self.dual_encoder_config is not None:
            raise ValueError("GCLConfig: `dual_encoder_config` needs backbone_type='dual_encoder'.")
        if self.backbone_type == "vista":
            self._resolve_vista_defaults()
        elif self.backbone_type == "dual_encoder":
            self._resolve_dual_encoder_defaults()
        else:
            self._resolve_clip_defaults()
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"GCLConfig: temperature must be > 0, got {self.temperature}.")
        self.loss_pairs = list(self.loss_pairs)
        if not self.loss_pairs:
            raise ValueError("GCLConfig: loss_pairs is empty.")
        for name in self.loss_pairs:
            split_pair(name)
        if len(set(self.loss_pairs)) != len(self.loss_pairs):
            raise ValueError(f"GCLConfig: loss_pairs has duplicates: {self.loss_pairs}.")
        self.loss_modalities = check_loss_modalities(self.loss_modalities, self.loss_pairs)
        if self.loss_weights is not None:
            self.loss_weights = [float(w) for w in self.loss_weights]
            if len(self.loss_weights) != len(self.loss_pairs):
                raise ValueError(
                    f"GCLConfig: {len(self.loss_weights)} loss_weights for {len(self.loss_pairs)} loss_pairs."
                )

    def _resolve_vista_defaults(self):
        if self.encoder_config is not None:
            raise ValueError("GCLConfig: backbone_type='vista' takes `vista_config`, not `encoder_config`.")
        if self.vista_config is None:
            self.vista_config = GCLVistaConfig()
        self.fusion = TOKEN_FUSION if self.fusion is None else self.fusion
        if self.fusion != TOKEN_FUSION:
            raise ValueError(
                f"GCLConfig: a VISTA backbone fuses image tokens inside its text encoder (fusion={TOKEN_FUSION!r}); "
                f"got fusion={self.fusion!r}."
            )
        self.temperature = VISTA_TEMPERATURE if self.temperature is None else self.temperature
        self.learnable_temperature = False if self.learnable_temperature is None else self.learnable_temperature

    def _resolve_dual_encoder_defaults(self):
        if self.encoder_config is not None or self.vista_config is not None:
            raise ValueError("GCLConfig: backbone_type='dual_encoder' takes `dual_encoder_config`, not "
                             "`encoder_config` / `vista_config`.")
        if self.dual_encoder_config is None:
            self.dual_encoder_config = GCLDualEncoderConfig()
        self.fusion = "sum" if self.fusion is None else self.fusion
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"GCLConfig: fusion {self.fusion!r} is not one of {', '.join(FUSION_MODES)}.")
        self.learnable_temperature = True if self.learnable_temperature is None else self.learnable_temperature

    def _resolve_clip_defaults(self):
        if self.vista_config is not None:
            raise ValueError("GCLConfig: `vista_config` needs backbone_type='vista'.")
        if self.encoder_config is None:
            self.encoder_config, _ = self.sub_configs_defaults["encoder_config"].create_subconfig("encoder_config")
        self.fusion = "sum" if self.fusion is None else self.fusion
        self.learnable_temperature = True if self.learnable_temperature is None else self.learnable_temperature
        if self.encoder_config.model_type not in SUPPORTED_ENCODERS:
            raise ValueError(
                f"GCLConfig: encoder model_type {self.encoder_config.model_type!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ENCODERS)}."
            )
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"GCLConfig: fusion {self.fusion!r} is not one of {', '.join(FUSION_MODES)}.")

    @property
    def projection_dim(self) -> int:
        """Size of the shared embedding space (the text hidden size for VISTA)."""
        if self.backbone_type == "vista":
            return self.vista_config.hidden_size
        if self.backbone_type == "dual_encoder":
            return self.dual_encoder_config.projection_dim
        return self.encoder_config.projection_dim

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # A CLIP-backbone model is saved as a native CLIP config.json with a `gcl` section (see `is_clip_layout`):
        # read it as the GCL config it encodes, so `GCLConfig.from_pretrained` (and remote code) load both layouts.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "clip":
            source = f"{pretrained_model_name_or_path}/config.json"
            config_dict = gcl_dict_from_clip_layout(config_dict, source=source)
            build_gcl_config(config_dict, source=source)  # a value GCLConfig rejects is reported against the section
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if config_dict.get("model_type") == "clip":
            config_dict = gcl_dict_from_clip_layout(config_dict)
        return super().from_dict(config_dict, **kwargs)


# --- The CLIP layout of a saved CLIP-backbone GCL model ---------------------------------------------------------------
# A CLIP / TinyCLIP / UniIR CLIP-SF backbone is saved as a *native* CLIP checkpoint: `config.json` is a `CLIPConfig`
# (`model_type: "clip"`) with one extra top-level section, `"gcl"`, holding the GCL fields below, so anything that loads
# CLIP loads it, and this library (or its remote code) reads the section back into a `GCLConfig`.
GCL_SECTION_KEY = "gcl"
GCL_SECTION_FORMAT_VERSION = 1
# The `GCLConfig` fields the section holds; every one is written and every one is required when it is read.
GCL_SECTION_FIELDS = (
    "fusion",
    "temperature",
    "learnable_temperature",
    "max_logit_scale",
    "loss_pairs",
    "loss_weights",
    "exclude_other_positive",
    "loss_modalities",
    "sigmoid_bias_init",
)
# Top-level `config.json` entries that describe the GCL wrapper rather than the CLIP model.
_WRAPPER_KEYS = ("auto_map", "custom_pipelines")


def is_clip_layout(config_dict: dict) -> bool:
    """Whether a `config.json` dict is the CLIP layout of a GCL model: a CLIP config with a `gcl` section."""
    return config_dict.get("model_type") == "clip" and GCL_SECTION_KEY in config_dict


def gcl_section(config: "GCLConfig") -> dict:
    """The `gcl` section of the CLIP layout for `config` (a CLIP-backbone `GCLConfig`)."""
    return {"format_version": GCL_SECTION_FORMAT_VERSION, **{name: getattr(config, name) for name in GCL_SECTION_FIELDS}}


def gcl_dict_from_clip_layout(config_dict: dict, source: str = "config.json") -> dict:
    r"""
    Turn the CLIP layout's `config.json` (a CLIP config with a `gcl` section) into the dict a `GCLConfig` is built from.

    Raises `ValueError` naming the key when the section is missing or malformed (not an object, a missing or unknown
    key, an unsupported format version, a value `GCLConfig` rejects). The same file still loads as a plain `CLIPModel`.
    """
    where = f"{source}: the `{GCL_SECTION_KEY}` section"
    if config_dict.get("model_type") != "clip":
        raise ValueError(f"{source} is not a CLIP config (model_type {config_dict.get('model_type')!r}).")
    if GCL_SECTION_KEY not in config_dict:
        raise ValueError(
            f"{source} is a plain CLIP config with no `{GCL_SECTION_KEY}` section, not a GCL model; wrap the backbone "
            "with GCLModel.from_backbone instead."
        )
    section = config_dict[GCL_SECTION_KEY]
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(section).__name__}.")
    version = section.get("format_version")
    if version is None:
        raise ValueError(f"{where} is missing key 'format_version'.")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: 'format_version' must be a positive integer, got {version!r}.")
    if version > GCL_SECTION_FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {version}; this gcl-hf reads up to {GCL_SECTION_FORMAT_VERSION}: upgrade it."
        )
    unknown = sorted(set(section) - {"format_version", *GCL_SECTION_FIELDS})
    if unknown:
        raise ValueError(f"{where} has unknown key {unknown[0]!r} (known: {', '.join(GCL_SECTION_FIELDS)}).")
    missing = [name for name in GCL_SECTION_FIELDS if name not in section]
    if missing:
        raise ValueError(f"{where} is missing key {missing[0]!r}.")
    if section["fusion"] not in FUSION_MODES:
        raise ValueError(
            f"{where}: key 'fusion' is {section['fusion']!r}, not one of {', '.join(FUSION_MODES)} (the fusions of a "
            "CLIP backbone)."
        )
    encoder_config = {key: value for key, value in config_dict.items() if key not in (GCL_SECTION_KEY, *_WRAPPER_KEYS)}
    gcl_dict = {key: config_dict[key] for key in _WRAPPER_KEYS if key in config_dict}
    gcl_dict.update(
        model_type=GCLConfig.model_type,
        architectures=["GCLModel"],
        backbone_type="clip",
        encoder_config=encoder_config,
        **{name: section[name] for name in GCL_SECTION_FIELDS},
    )
    for key in ("dtype", "transformers_version"):
        if key in config_dict:
            gcl_dict[key] = config_dict[key]
    return gcl_dict


def build_gcl_config(gcl_dict: dict, source: str = "config.json", **kwargs) -> "GCLConfig":
    """`GCLConfig(**gcl_dict)`, with an invalid value reported as an error naming `source`'s `gcl` section."""
    try:
        return GCLConfig.from_dict(dict(gcl_dict), **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: the `{GCL_SECTION_KEY}` section does not make a valid GCL config: {error}") from error


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def load_gcl_config(pretrained_model_name_or_path, **kwargs) -> "GCLConfig | None":
    r"""
    The [`GCLConfig`] of a saved GCL model in either layout (the CLIP layout: a native CLIP `config.json` with a `gcl`
    section; the GCL layout: `model_type: "gcl"`), or `None` when the checkpoint is not a GCL model (e.g. a plain CLIP)
    or has no `config.json` that can be read (a wrong path: the caller's own loading then says why).
    Use it instead of `isinstance(AutoConfig.from_pretrained(path), GCLConfig)`, which misses the CLIP layout.

    Args:
        pretrained_model_name_or_path: a directory or Hub id.
        kwargs: Hub arguments (`revision`, `token`, `cache_dir`, `local_files_only`, ...); others are ignored.

    Raises `ValueError` naming the key when the `gcl` section is malformed.
    """
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
    except OSError:
        return None
    if config_dict.get("model_type") != GCLConfig.model_type and not is_clip_layout(config_dict):
        return None
    return GCLConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)


__all__ = [
    "load_gcl_config",
    "GCL_SECTION_FIELDS",
    "GCL_SECTION_FORMAT_VERSION",
    "GCL_SECTION_KEY",
    "build_gcl_config",
    "gcl_dict_from_clip_layout",
    "gcl_section",
    "is_clip_layout",
    "GCLConfig",
    "GCLDualEncoderConfig",
    "GCLEvaVisionConfig",
    "GCLVistaConfig",
    "ALL_LOSS_PAIRS",
    "BACKBONE_TYPES",
    "FUSION_MODES",
    "MODALITIES",
    "TOKEN_FUSION",
    "check_loss_modalities",
    "split_pair",
]
