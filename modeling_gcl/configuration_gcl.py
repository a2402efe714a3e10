# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GCL model configuration.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code beside
`modeling_gcl.py` and `processing_gcl.py`.
"""

from dataclasses import field

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_vista import GCLEvaVisionConfig, GCLVistaConfig

# The six ordered pairs of different modalities of GCL (paper Eq. 2), named `<anchor>2<positive>`.
MODALITIES = ("i", "t", "it")
ALL_LOSS_PAIRS = ("i2t", "i2it", "t2i", "t2it", "it2i", "it2t")

# How the image and text vectors of a score-fusion backbone (CLIP, TinyCLIP, UniIR CLIP-SF) become one.
FUSION_MODES = ("sum", "normalized_sum", "mean", "attention")

# Backbones the model can wrap: the `model_type` of `encoder_config`.
SUPPORTED_ENCODERS = ("clip",)

# `backbone_type`: "clip" wraps a CLIPModel (`encoder_config`, score fusion); "vista" is BAAI's Visualized-BGE
# (`vista_config`), whose fused embedding comes from image tokens fed into the text encoder.
BACKBONE_TYPES = ("clip", "vista")
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
    }

    backbone_type: str = "clip"
    encoder_config: PreTrainedConfig | dict | None = None
    vista_config: GCLVistaConfig | dict | None = None
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
        if self.backbone_type == "vista":
            self._resolve_vista_defaults()
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
        return self.encoder_config.projection_dim


__all__ = [
    "GCLConfig",
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
