# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Processor for GCL models: the backbone's image processor and tokenizer behind one callable.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code.
"""

from transformers import AutoImageProcessor, AutoTokenizer, CLIPImageProcessorPil
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

    def __call__(self, images=None, text=None, **kwargs):
        # Captions longer than the text model's length are truncated unless the caller decides otherwise; it also keeps
        # tokenizers whose config sets a `max_length` (MiniLM's) from warning that `padding=True` ignores it.
        if text is not None and "truncation" not in kwargs:
            kwargs["truncation"] = True
        return super().__call__(images=images, text=text, **kwargs)

    @classmethod
    def from_backbone(cls, backbone: str, **kwargs) -> "GCLProcessor":
        """Build from a backbone's Hub id or directory (e.g. `"openai/clip-vit-base-patch32"`)."""
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(backbone, **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(backbone, **kwargs),
        )

    @classmethod
    def for_vista(
        cls, text_model: str, image_size: int = 224, num_image_tokens: int | None = None, **kwargs
    ) -> "GCLProcessor":
        r"""
        The processor of a VISTA (Visualized-BGE) model: the text model's tokenizer and EVA02-CLIP's evaluation
        transform (shorter side resized to `image_size`, bicubic and antialiased through PIL; centre crop; RGB; CLIP's
        mean and std).

        Args:
            text_model (`str`): Hub id or directory of the text encoder (`"BAAI/bge-base-en-v1.5"`, `"BAAI/bge-m3"`).
            image_size (`int`, defaults to 224): the vision tower's resolution.
            num_image_tokens (`int`, *optional*): patch tokens per image (196 for B/16). When given, the tokenizer's
                `model_max_length` is lowered so a fused item (image tokens + text) fits the position table.
        """
        # VISTA embeds every text as segment 0, so the BERT tokenizer need not return token_type_ids.
        tokenizer = AutoTokenizer.from_pretrained(text_model, model_input_names=["input_ids", "attention_mask"], **kwargs)
        if num_image_tokens is not None:
            tokenizer.model_max_length = min(tokenizer.model_max_length, _text_positions(text_model, kwargs) - num_image_tokens)
        # The PIL image processor: PIL's bicubic resize antialiases as EVA02-CLIP's transform does, and it needs no
        # torchvision.
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            resample=3,  # bicubic
            do_center_crop=True,
            do_convert_rgb=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    @classmethod
    def from_towers(cls, vision_model, text_model, image_processor=None, tokenizer=None, **kwargs) -> "GCLProcessor":
        r"""
        The processor of a dual encoder (`GCLModel.from_towers`): the vision tower's image processor and the text
        tower's tokenizer (returning `input_ids` and `attention_mask` only).

        Args:
            vision_model (`str` or `PreTrainedModel`): Hub id / directory of the vision tower (its
                `preprocessor_config.json` is read), or the loaded tower (an EfficientNet-Lite gets its standard
                transform; other loaded towers need `image_processor`).
            text_model (`str`): Hub id / directory of the text tower (its tokenizer); a loaded tower needs `tokenizer`.
            image_processor, tokenizer (*optional*): use these instead.
        """
        if image_processor is None:
            if isinstance(vision_model, str):
                try:
                    image_processor = AutoImageProcessor.from_pretrained(vision_model, **kwargs)
                except (OSError, ValueError, KeyError) as error:
                    raise ValueError(
                        f"The vision tower {vision_model} has no image processor (preprocessor_config.json) that "
                        f"AutoImageProcessor can load ({type(error).__name__}: {str(error).splitlines()[0]}); save one "
                        "beside it or pass image_processor=."
                    ) from error
            elif getattr(getattr(vision_model, "config", None), "model_type", None) == "gcl_efficientnet_lite":
                image_processor = cls.efficientnet_lite_image_processor(vision_model.config.image_size)
            else:
                raise ValueError(
                    f"The vision tower was given as a loaded {type(vision_model).__name__}, whose image processor "
                    "cannot be found; pass its Hub id / directory or image_processor=."
                )
        if tokenizer is None:
            if not isinstance(text_model, str):
                raise ValueError("The text tower was given as a loaded model; pass its Hub id / directory or tokenizer=.")
            tokenizer = AutoTokenizer.from_pretrained(text_model, model_input_names=["input_ids", "attention_mask"], **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    @staticmethod
    def efficientnet_lite_image_processor(image_size: int = 224) -> CLIPImageProcessorPil:
        r"""
        EfficientNet-Lite's evaluation transform (TF `preprocessing.py`): shorter side resized to `image_size + 32`,
        bicubic, centre crop of `image_size`, RGB, pixels scaled to [-1, 1] as `(x - 0.5) / 0.5` (mean = std = 0.5).
        """
        return CLIPImageProcessorPil(
            size={"shortest_edge": image_size + 32},
            crop_size={"height": image_size, "width": image_size},
            resample=3,  # bicubic
            do_center_crop=True,
            do_convert_rgb=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )

    @property
    def is_clip_processor(self) -> bool:
        """Whether this holds exactly what `CLIPProcessor` holds: a CLIP tokenizer and a CLIP image processor."""
        return (type(self.tokenizer).__name__.startswith("CLIPTokenizer")
                and type(self.image_processor).__name__.startswith("CLIPImageProcessor"))

    def to_dict(self):
        output = super().to_dict()
        # Naming CLIPProcessor as a CLIP pair's class makes `AutoProcessor.from_pretrained(folder)` load it natively,
        # without remote code; `GCLProcessor.from_pretrained(folder)` and `trust_remote_code=True` (whose `auto_map`
        # entry is kept) still give this class.
        if self.is_clip_processor:
            output["processor_class"] = "CLIPProcessor"
        return output

    @property
    def max_text_length(self) -> int | None:
        """The tokenizer's maximum sequence length (77 for CLIP), or `None` when it sets none."""
        length = getattr(self.tokenizer, "model_max_length", None)
        return length if length is not None and length < 100_000 else None


def _text_positions(text_model: str, kwargs) -> int:
    """Usable positions of a text encoder: `max_position_embeddings` (XLM-R's padding offset is not used by VISTA's
    fused positions, which start at 0)."""
    from transformers import AutoConfig

    config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")}
    return AutoConfig.from_pretrained(text_model, **config_kwargs).max_position_embeddings


__all__ = ["GCLProcessor"]
