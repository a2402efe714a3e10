# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Converters from released retriever checkpoints to `GCLModel` directories (`AutoModel.from_pretrained`-loadable).

- `gcl-convert-vista` (`trainer.convert.vista`): BAAI Visualized-BGE (`Visualized_base_en_v1.5.pth`, `Visualized_m3.pth`).
- `gcl-convert-uniir` (`trainer.convert.uniir_clip_sf`): UniIR CLIP-SF (`clip_sf_large.pth`).
"""

from .common import ConversionError

__all__ = ["ConversionError"]
