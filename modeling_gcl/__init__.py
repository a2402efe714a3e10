# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GCL model, configuration, processor and pipeline.

A CLIP-backbone model is saved as a native CLIP checkpoint (a `CLIPConfig` `config.json` with a `gcl` section, CLIP's
weights under CLIP's names; see `GCLModel.save_pretrained`): `CLIPModel` / `AutoModel` load it as CLIP anywhere, and
`GCLModel.from_pretrained` (or `load_gcl_config`) reads it as GCL. Importing this package registers GCL's own layout
(`model_type="gcl"`, VISTA and older CLIP saves) with the Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification` and `AutoProcessor` load those without `trust_remote_code`. It also marks
the classes for transformers' remote-code mechanism (`register_for_auto_class`):
every `save_pretrained` then copies `configuration_gcl.py`, `modeling_gcl.py`, `processing_gcl.py` and the files they
import (the VISTA and EVA modules) beside the weights and writes `auto_map` entries, so a machine *without* this library loads the directory (or its Hub repository)
with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

from .configuration_gcl import (
    ALL_LOSS_PAIRS,
    BACKBONE_TYPES,
    FUSION_MODES,
    GCL_SECTION_KEY,
    MODALITIES,
    TOKEN_FUSION,
    GCLConfig,
    load_gcl_config,
    split_pair,
)
from .configuration_dual_encoder import GCLDualEncoderConfig
from .configuration_efficientnet_lite import GCLEfficientNetLiteConfig
from .configuration_vista import GCLEvaVisionConfig, GCLVistaConfig
from .modeling_efficientnet_lite import GCLEfficientNetLiteModel
from .modeling_gcl import GCL_WEIGHTS_NAME, GCLModel, GCLOutput, GCLPreTrainedModel, GCLScoreFusion, l2_normalize
from .pipeline_gcl import GCL_PIPELINE_TASK, GCLFeatureExtractionPipeline
from .processing_gcl import GCLProcessor

AutoConfig.register(GCLConfig.model_type, GCLConfig, exist_ok=True)
AutoModel.register(GCLConfig, GCLModel, exist_ok=True)
# GCLModel returns CLIP-style `logits_per_image`, so the standard zero-shot-image-classification pipeline runs it.
AutoModelForZeroShotImageClassification.register(GCLConfig, GCLModel, exist_ok=True)
AutoProcessor.register(GCLConfig, GCLProcessor, exist_ok=True)
# The EfficientNet-Lite image tower is a model of its own too (a converted folder loads with AutoModel).
AutoConfig.register(GCLEfficientNetLiteConfig.model_type, GCLEfficientNetLiteConfig, exist_ok=True)
AutoModel.register(GCLEfficientNetLiteConfig, GCLEfficientNetLiteModel, exist_ok=True)

GCLConfig.register_for_auto_class("AutoConfig")
GCLModel.register_for_auto_class("AutoModel")
GCLProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ALL_LOSS_PAIRS",
    "BACKBONE_TYPES",
    "FUSION_MODES",
    "GCL_SECTION_KEY",
    "GCL_WEIGHTS_NAME",
    "GCL_PIPELINE_TASK",
    "MODALITIES",
    "TOKEN_FUSION",
    "GCLConfig",
    "GCLDualEncoderConfig",
    "GCLEfficientNetLiteConfig",
    "GCLEfficientNetLiteModel",
    "GCLEvaVisionConfig",
    "GCLVistaConfig",
    "GCLFeatureExtractionPipeline",
    "GCLModel",
    "GCLOutput",
    "GCLPreTrainedModel",
    "GCLProcessor",
    "GCLScoreFusion",
    "l2_normalize",
    "load_gcl_config",
    "split_pair",
]
