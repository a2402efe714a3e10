# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A GCL model as a sentence-transformers module: `SentenceTransformer(folder, trust_remote_code=True)` on any saved
GCL folder embeds texts, images and image+text items.

Every `GCLModel.save_pretrained` names this module in the folder's `modules.json` and copies this file beside the
weights (see `sentence_transformers_files.py`), so sentence-transformers loads it from the folder itself, with or
without this library installed:

```python
>>> from sentence_transformers import SentenceTransformer
>>> model = SentenceTransformer("path/to/gcl-model", trust_remote_code=True)
>>> texts = model.encode(["a red bicycle", "a cat on a sofa"])
>>> images = model.encode([Image.open("bike.jpg")])  # PIL images, paths or URLs
>>> fused = model.encode([{"image": Image.open("bike.jpg"), "text": "the same bicycle in blue"}])
>>> model.similarity(fused, images)
```

The embeddings are the L2-normalised text / image / fused embeddings of `GCLModel` (`get_text_features`,
`get_image_features`, `get_fused_features`). One `encode` call takes one kind of item, as for any multimodal
sentence-transformers model that is not chat-based.

Only this file imports sentence-transformers (the optional `st` extra: `pip install 'sentence-transformers>=5.4'`); the library never
imports it.
"""

from typing import Any

from sentence_transformers.base.modality import infer_modality
from sentence_transformers.base.modules import InputModule
from transformers.image_utils import load_image

from .modeling_gcl import GCLModel
from .processing_gcl import GCLProcessor
from .sentence_transformers_files import MODULE_CONFIG_FILE

TEXT, IMAGE, FUSED = "text", "image", ("image", "text")  # sentence-transformers' names of the three kinds of items


class GCLEmbedding(InputModule):
    r"""
    The input module of a GCL sentence-transformers model: preprocesses items with the [`GCLProcessor`] and embeds
    them with the [`GCLModel`], writing `(batch_size, projection_dim)` L2-normalised vectors to
    `features["sentence_embedding"]`.

    Items (one kind per batch):
        - texts: `str`, or `{"text": str}`;
        - images: a `PIL.Image.Image`, a local image path or URL, an `(H, W, C)` array, or `{"image": ...}`;
        - fused image+text items: `{"image": image, "text": str}` (one image and one text each).

    Args:
        model ([`GCLModel`]): any backbone (CLIP, VISTA, ...).
        processor ([`GCLProcessor`]): its processor.
        max_seq_length (`int`, *optional*): truncate texts to this many tokens; default the tokenizer's maximum.
    """

    config_file_name = MODULE_CONFIG_FILE
    config_keys = ["max_seq_length"]
    save_in_root = True  # the folder's own config.json / model.safetensors / processor files are this module's

    def __init__(self, model: GCLModel, processor: GCLProcessor, max_seq_length: int | None = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self._max_seq_length = max_seq_length

    @property
    def modalities(self) -> list:
        return [TEXT, IMAGE, FUSED]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def max_seq_length(self) -> int | None:
        """Texts are truncated to this many tokens (the tokenizer's maximum unless set)."""
        if self._max_seq_length is not None:
            return self._max_seq_length
        return getattr(self.processor, "max_text_length", None)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self._max_seq_length = value

    def get_config_dict(self) -> dict[str, Any]:
        return {"max_seq_length": self._max_seq_length}  # what was set, not the tokenizer's default

    def get_embedding_dimension(self) -> int:
        return self.model.config.projection_dim

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        """Items of one kind -> `pixel_values` and/or `input_ids` + `attention_mask`, and `modality` (the kind).
        `prompt` is prepended to every text (of text and fused items)."""
        if not inputs:
            return {}
        kinds = {self._kind(item) for item in inputs}
        if len(kinds) > 1:
            raise ValueError(
                "This batch mixes texts, images and image+text items; a GCL model encodes one kind per call "
                "(e.g. model.encode(texts), model.encode(images), model.encode([{'image': ..., 'text': ...}]))."
            )
        kind = kinds.pop()
        texts = images = None
        if kind == TEXT:
            texts = [item if isinstance(item, str) else item["text"] for item in inputs]
        elif kind == IMAGE:
            images = [self._load_image(item["image"] if isinstance(item, dict) else item) for item in inputs]
        else:
            texts = [item["text"] for item in inputs]
            images = [self._load_image(item["image"]) for item in inputs]
        text_kwargs = {}
        if texts is not None:
            if prompt:
                texts = [prompt + text for text in texts]
            max_length = self.max_seq_length
            text_kwargs = {"padding": True, "truncation": max_length is not None, "max_length": max_length}
        encoded = self.processor(images=images, text=texts, return_tensors="pt", **text_kwargs)
        features = {key: encoded[key] for key in ("pixel_values", "input_ids", "attention_mask") if key in encoded}
        features["modality"] = kind
        return features

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        kind = features.get("modality")
        if kind is None:  # features built elsewhere: the inputs present say which kind
            kind = FUSED if "pixel_values" in features and "input_ids" in features else (
                IMAGE if "pixel_values" in features else TEXT
            )
        pixel_values = features.get("pixel_values")
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.model.dtype)
        if kind == TEXT:
            embeddings = self.model.get_text_features(features["input_ids"], features.get("attention_mask"))
        elif kind == IMAGE:
            embeddings = self.model.get_image_features(pixel_values)
        else:
            embeddings = self.model.get_fused_features(pixel_values, features["input_ids"], features.get("attention_mask"))
        features["sentence_embedding"] = embeddings
        return features

    def _kind(self, item) -> str | tuple[str, str]:
        """An item's kind, as sentence-transformers names it (so a local image path is an image, as `encode` decided)."""
        try:
            kind = infer_modality(item, supported_modalities=self.modalities)
        except ValueError as error:
            raise ValueError(f"Cannot embed {type(item).__name__} input with a GCL model: {error}") from None
        if kind not in self.modalities:
            raise ValueError(
                f"A GCL model embeds texts, images and {{'image': ..., 'text': ...}} items, not {kind!r} inputs."
            )
        if isinstance(item, dict) and (
            any(isinstance(value, (list, tuple)) for value in item.values()) or not isinstance(item.get("text", ""), str)
        ):
            raise ValueError("Each item is one text, one image, or {'image': image, 'text': str}; got a list or a non-text.")
        return kind

    @staticmethod
    def _load_image(image):
        # Paths, URLs and base64 strings load as transformers' pipelines load them; arrays go to the processor as-is.
        return load_image(image) if isinstance(image, str) else image

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        # The model's save also writes modules.json and the module file (sentence_transformers_files.py); when called by
        # SentenceTransformer.save, that then writes its own modules.json and config_sentence_transformers.json.
        self.model.save_pretrained(output_path)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> "GCLEmbedding":
        if backend != "torch":
            raise ValueError(f"A GCL model runs with the torch backend only, not backend={backend!r}.")
        hub_kwargs = {"token": token, "cache_dir": cache_folder, "revision": revision, "local_files_only": local_files_only}
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        config = cls.load_config(
            model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision,
            local_files_only=local_files_only,
        )
        # The classes are this file's siblings (the folder's own code when loaded from it): no trust flag to pass on.
        model_kwargs = {key: value for key, value in (model_kwargs or {}).items() if key != "trust_remote_code"}
        processor_kwargs = {key: value for key, value in (processor_kwargs or {}).items() if key != "trust_remote_code"}
        model = GCLModel.from_pretrained(model_name_or_path, **hub_kwargs, **model_kwargs).eval()
        try:
            processor = GCLProcessor.from_pretrained(model_name_or_path, **hub_kwargs, **processor_kwargs)
        except OSError as error:
            reason = str(error).split(". ")[0]  # transformers' first sentence, without its advice about the Hub
            raise OSError(
                f"{model_name_or_path} has a GCL model but its processor did not load ({reason}); save the "
                "GCLProcessor beside the model: processor.save_pretrained(folder)."
            ) from None
        return cls(model, processor, **config)


__all__ = ["GCLEmbedding"]
