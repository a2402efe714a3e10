# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""GCL model, configuration and processor. Importing this package registers them with the Auto classes, so
`AutoConfig`, `AutoModel` and `AutoProcessor` load GCL checkpoints (`model_type="gcl"`)."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_gcl import ALL_LOSS_PAIRS, FUSION_MODES, MODALITIES, GCLConfig, split_pair
from .modeling_gcl import GCLModel, GCLOutput, GCLPreTrainedModel, GCLScoreFusion, l2_normalize
from .processing_gcl import GCLProcessor

AutoConfig.register(GCLConfig.model_type, GCLConfig, exist_ok=True)
AutoModel.register(GCLConfig, GCLModel, exist_ok=True)
AutoProcessor.register(GCLConfig, GCLProcessor, exist_ok=True)

__all__ = [
    "ALL_LOSS_PAIRS",
    "FUSION_MODES",
    "MODALITIES",
    "GCLConfig",
    "GCLModel",
    "GCLOutput",
    "GCLPreTrainedModel",
    "GCLProcessor",
    "GCLScoreFusion",
    "l2_normalize",
    "split_pair",
]
