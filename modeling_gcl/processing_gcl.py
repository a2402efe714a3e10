# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Processor for GCL models: the backbone's image processor and tokenizer behind one callable.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code.
"""

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin


class GCLProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer. `processor(images=..., text=...)` returns `pixel_values`, `input_ids`
    and `attention_mask`; with both, row `j` of the images and of the texts form the fused item `j`.

    Args:
        image_processor ([`BaseImageProcessor`]): e.g. CLIP's image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): e.g. CLIP's tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_backbone(cls, backbone: str, **kwargs) -> "GCLProcessor":
        """Build from a backbone's Hub id or directory (e.g. `"openai/clip-vit-base-patch32"`)."""
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(backbone, **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(backbone, **kwargs),
        )

    @property
    def max_text_length(self) -> int | None:
        """The tokenizer's maximum sequence length (77 for CLIP), or `None` when it sets none."""
        length = getattr(self.tokenizer, "model_max_length", None)
        return length if length is not None and length < 100_000 else None


__all__ = ["GCLProcessor"]
