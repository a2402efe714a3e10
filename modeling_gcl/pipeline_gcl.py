# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A feature-extraction pipeline for GCL models: the embedding of an image, a text, or an image+text pair.

Self-contained (imports only `torch`, `transformers` and its sibling files) so it can be uploaded to the Hub as remote
code: a saved GCL model whose `config.json` names it under `custom_pipelines` loads it with

    pipeline("feature-extraction", model="org/gcl-model", trust_remote_code=True)
"""

from typing import Any

import torch
from transformers import CLIPModel, Pipeline
from transformers.image_utils import load_image

from .configuration_gcl import GCL_SECTION_KEY
from .modeling_gcl import GCLModel

# The task name under which `config.json`'s `custom_pipelines` registers this pipeline. It is the standard task name on
# purpose: transformers' own feature-extraction pipeline cannot run a GCL model (it feeds only token ids and reads the
# first output), so the name resolves to the implementation that works.
GCL_PIPELINE_TASK = "feature-extraction"


class GCLFeatureExtractionPipeline(Pipeline):
    r"""
    Embeds one item per input, in the model's shared L2-normalised space: image-only (`i`), text-only (`t`) or fused
    image+text (`it`).

    Inputs, each alone or in a list:
        - a `str`: a **text** (as the standard feature-extraction pipeline takes it);
        - a `PIL.Image.Image`: an image;
        - a `dict` with `"image"` and/or `"text"`: an image (PIL image, local path or URL), a text, or both (fused);
        - keyword arguments `image=` and/or `text=` instead of a positional input.

    Returns the embedding as a list of floats (`return_tensors=True`: a 1-D `torch.Tensor`), or a list of them for a
    list input.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> embed = pipeline("feature-extraction", model="org/gcl-model", trust_remote_code=True)
    >>> text_vector = embed("a red bicycle")
    >>> image_vector = embed(image="bicycle.jpg")
    >>> fused_vector = embed({"image": "bicycle.jpg", "text": "a red bicycle"})
    ```
    """

    # The GCL processor carries both the tokenizer and the image processor.
    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, model, *args, **kwargs):
        # `pipeline(task, model=folder)` loads a CLIP-layout GCL checkpoint as the `CLIPModel` it natively is; embed
        # with the GCL model around those same weights (its fusion, from the config's `gcl` section).
        if isinstance(model, CLIPModel) and getattr(model.config, GCL_SECTION_KEY, None) is not None:
            model = GCLModel.from_clip_checkpoint(model)
        super().__init__(model, *args, **kwargs)

    def __call__(self, inputs: Any = None, *, image: Any = None, text: str | None = None, **kwargs):
        if inputs is None:
            if image is None and text is None:
                raise ValueError("GCLFeatureExtractionPipeline needs an input: a text, an image, or both.")
            inputs = {"image": image, "text": text}
        elif image is not None or text is not None:
            raise ValueError("Pass either a positional input or image=/text= keywords, not both.")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, return_tensors: bool | None = None, timeout: float | None = None, **kwargs):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        postprocess_params = {} if return_tensors is None else {"return_tensors": return_tensors}
        return preprocess_params, {}, postprocess_params

    @staticmethod
    def _as_item(inputs: Any) -> dict[str, Any]:
        """Any accepted input -> `{"image": ... or None, "text": ... or None}`."""
        if isinstance(inputs, str):
            return {"image": None, "text": inputs}
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"image", "text"}
            if unknown:
                raise ValueError(f"Unknown input keys {sorted(unknown)}; expected 'image' and/or 'text'.")
            item = {"image": inputs.get("image"), "text": inputs.get("text")}
            if item["image"] is None and item["text"] is None:
                raise ValueError("An input dict needs an 'image', a 'text', or both.")
            return item
        return {"image": inputs, "text": None}  # a PIL image (or anything `load_image` accepts)

    def preprocess(self, inputs: Any, timeout: float | None = None) -> dict[str, torch.Tensor]:
        item = self._as_item(inputs)
        images = None if item["image"] is None else [load_image(item["image"], timeout=timeout)]
        texts = None if item["text"] is None else [item["text"]]
        max_length = getattr(self.processor, "max_text_length", None)
        if max_length is None:  # a CLIPProcessor (what AutoProcessor gives for a native CLIP checkpoint)
            length = getattr(getattr(self.processor, "tokenizer", None), "model_max_length", None)
            max_length = length if length is not None and length < 100_000 else None
        text_kwargs = {"padding": True, "truncation": max_length is not None, "max_length": max_length} if texts else {}
        encoded = self.processor(images=images, text=texts, return_tensors="pt", **text_kwargs)
        model_inputs = {key: encoded[key] for key in ("pixel_values", "input_ids", "attention_mask") if key in encoded}
        if "pixel_values" in model_inputs:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.model.dtype)
        return model_inputs

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.model(**model_inputs)
        if outputs.fused_embeds is not None:
            return {"embedding": outputs.fused_embeds}
        return {"embedding": outputs.image_embeds if outputs.image_embeds is not None else outputs.text_embeds}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: bool = False):
        embedding = model_outputs["embedding"][0].float()
        return embedding if return_tensors else embedding.tolist()


__all__ = ["GCLFeatureExtractionPipeline", "GCL_PIPELINE_TASK"]
