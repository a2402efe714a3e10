# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""PyTorch GCL model: a universal multimodal retriever (image, text and fused image+text embeddings in one space)
trained with Generalized Contrastive Learning.

Paper: "Generalized Contrastive Learning for Universal Multimodal Retrieval", J. Lee, J. Cho, H. Park, M. Hayat,
K. Hwang, F. Porikli, S. Choi, NeurIPS 2025, arXiv:2509.25638.

Self-contained (imports only `torch`, `transformers` and its sibling files) so it can be uploaded to the Hub as
remote code. Training losses live in the `trainer` package of the library; `forward(..., return_loss=True)` uses
them when the library is installed.
"""

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, CLIPModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput, cached_file
from transformers.utils import logging as hf_logging

from .configuration_gcl import (
    GCL_SECTION_KEY,
    TOKEN_FUSION,
    GCLConfig,
    build_gcl_config,
    gcl_dict_from_clip_layout,
    gcl_section,
)
from .configuration_vista import GCLEvaVisionConfig, GCLVistaConfig
from .modeling_eva import GCLEvaEmbeddings, GCLEvaRotaryEmbedding, eva_rope_tables
from .modeling_dual_encoder import GCLDualEncoder
from .modeling_vista import GCLVistaEncoder


def _load_text_encoder_without_pooler(name_or_path: str, **load_kwargs) -> PreTrainedModel:
    """`AutoModel.from_pretrained(..., add_pooling_layer=False)` without transformers' load report about the pooler
    weights it leaves out on purpose; any other missing or unexpected weight is still reported, as one warning."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, output_loading_info=True,
                                                **load_kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    surprises = {kind: [key for key in info.get(kind, ()) if not key.startswith("pooler.")]
                 for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(surprises.values()):
        hf_logging.get_logger(__name__).warning(
            "%s: loading the text encoder left %s", name_or_path,
            "; ".join(f"{kind.replace('_', ' ')} {keys}" for kind, keys in surprises.items() if keys))
    return model


def l2_normalize(embeds: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension; `(..., dim)` -> `(..., dim)`."""
    return F.normalize(embeds, p=2, dim=-1)


# The CLIP layout of a CLIP-backbone model (see `configuration_gcl.is_clip_layout`): `model.safetensors` holds CLIP's
# own tensors under CLIP's names, and GCL's few tensors of its own (an attention fusion's scores, the sigmoid loss's
# bias), when the model has any, go beside it in this file, so `CLIPModel.from_pretrained` meets no unexpected keys.
GCL_WEIGHTS_NAME = "gcl_weights.safetensors"
ENCODER_PREFIX = "encoder."
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def split_clip_layout_state_dict(state_dict) -> tuple[dict, dict]:
    """A `GCLModel` state dict -> (the `CLIPModel` state dict, under CLIP's names; GCL's own tensors)."""
    clip_state, gcl_state = {}, {}
    for key, value in state_dict.items():
        if key.startswith(ENCODER_PREFIX):
            clip_state[key[len(ENCODER_PREFIX):]] = value
        else:
            gcl_state[key] = value
    return clip_state, gcl_state


def _write_json_atomic(path: Path, content: dict) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class GCLOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        The training loss chosen by the config (GCL by default).
    image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
        L2-normalised image-only embeddings; present when `pixel_values` is given.
    text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
        L2-normalised text-only embeddings; present when `input_ids` is given.
    fused_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
        L2-normalised fused image+text embeddings of the pairs `(pixel_values[j], input_ids[j])`; present when both are
        given.
    logit_scale (`torch.FloatTensor` of shape `()`):
        `1 / τ`: the exponentiated, clamped logit scale that multiplies cosine similarities.
    loss_terms (`dict[str, torch.FloatTensor]`, *optional*, returned when `return_loss=True`):
        The named, detached loss terms (`loss_i2t`, `loss_i2it`, ... for GCL) for logging.
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`, *optional*):
        `logit_scale ·` cosine similarity of every image with every text, as CLIP returns it; present when both
        `pixel_values` and `input_ids` are given. The zero-shot-image-classification pipeline reads it.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`, *optional*):
        The transpose of `logits_per_image`.
    logit_bias (`torch.FloatTensor` of shape `()`, *optional*):
        The learnable bias `b` of the sigmoid GCL loss; present when the model has one (`config.sigmoid_bias_init`).
    """

    loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    fused_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None
    # Last, so the tuple positions of the fields above stay as they were.
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logit_bias: torch.FloatTensor | None = None


class GCLScoreFusion(nn.Module):
    """Pools an image vector and a text vector (unnormalised projections) into one fused vector.

    The result is *not* normalised; the caller L2-normalises it, which is why `sum` and `mean` give the same
    embedding. See `GCLConfig.fusion` for the modes.
    """

    def __init__(self, mode: str, embed_dim: int):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            # A linear relevance score per vector, computed on its direction so projection norms cannot dominate.
            # Plain parameters (not an nn.Linear) so `_init_weights` sees and zero-initialises them.
            self.score_weight = nn.Parameter(torch.zeros(embed_dim))
            self.score_bias = nn.Parameter(torch.zeros(2))  # image, text: a prior preference between the two

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """`(batch, dim), (batch, dim) -> (batch, dim)`."""
        if self.mode == "sum":
            return image_features + text_features
        if self.mode == "mean":
            return (image_features + text_features) / 2
        if self.mode == "normalized_sum":
            return l2_normalize(image_features) + l2_normalize(text_features)
        if self.mode == "attention":
            stacked = torch.stack([image_features, text_features], dim=1)  # (batch, 2, dim)
            scores = l2_normalize(stacked) @ self.score_weight + self.score_bias  # (batch, 2)
            weights = scores.softmax(dim=1).unsqueeze(-1)  # (batch, 2, 1)
            return (weights * stacked).sum(dim=1)
        if self.mode == TOKEN_FUSION:
            raise ValueError(
                "A VISTA model fuses image tokens inside its text encoder, not two vectors: use "
                "`model.get_fused_features(pixel_values, input_ids, attention_mask)`."
            )
        raise ValueError(f"Unknown fusion mode {self.mode!r}")


class GCLPreTrainedModel(PreTrainedModel):
    config: GCLConfig
    base_model_prefix = "gcl"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings",
        "GCLEvaLayer", "GCLEvaEmbeddings", "BertLayer", "XLMRobertaLayer",
    ]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        # The wrapped CLIP / text encoders are PreTrainedModels and initialise themselves; only GCL's own modules
        # (the fusion, VISTA's EVA tower, `visual_proj` and logit scale) land here.
        if isinstance(module, GCLModel) and module.logit_bias is not None:
            init.constant_(module.logit_bias, self.config.sigmoid_bias_init)
        if isinstance(module, GCLScoreFusion) and module.mode == "attention":
            init.zeros_(module.score_weight)
            init.zeros_(module.score_bias)
        elif isinstance(module, GCLVistaEncoder):
            init.constant_(module.logit_scale, math.log(1.0 / (self.config.temperature or 0.02)))
        elif isinstance(module, GCLDualEncoder):
            # The towers are PreTrainedModels and initialise themselves; the new projections start as CLIP's.
            dual = module.config
            for projection in (module.visual_projection, module.text_projection):
                init.normal_(projection.weight, std=dual.projection_initializer_factor * projection.in_features**-0.5)
            scale = dual.logit_scale_init_value if self.config.temperature is None else math.log(1 / self.config.temperature)
            init.constant_(module.logit_scale, scale)
        elif isinstance(module, GCLEvaEmbeddings):
            std = self.config.vista_config.vision_config.initializer_range
            init.normal_(module.class_embedding, std=std)
            init.normal_(module.position_embedding, std=std)
        elif isinstance(module, GCLEvaRotaryEmbedding):
            cos, sin = eva_rope_tables(module.config, device=module.freqs_cos.device)
            init.copy_(module.freqs_cos, cos)
            init.copy_(module.freqs_sin, sin)
        elif self.config.backbone_type == "vista" and isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, std=self.config.vista_config.vision_config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif self.config.backbone_type == "vista" and isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            # modules.json & co., so the folder also loads with `SentenceTransformer(folder, trust_remote_code=True)`.
            # That module imports sentence-transformers; this writer does not (sentence_transformers_files.py).
            from .sentence_transformers_files import write_sentence_transformers_files

            write_sentence_transformers_files(save_directory)


class GCLModel(GCLPreTrainedModel):
    r"""
    A retriever that embeds images (`i`), texts (`t`) and fused image+text items (`it`) into one L2-normalised space.

    With a CLIP backbone (CLIP, TinyCLIP, UniIR CLIP-SF) the fused embedding is pooled from the two projections
    (`config.fusion`), so it costs nothing beyond the image and text passes. With a VISTA backbone
    (`config.backbone_type="vista"`, BAAI Visualized-BGE) image tokens go into the text encoder: image-only and fused
    items are each one pass of the text encoder over [CLS], the image tokens and the text, and text-only items are the
    plain text encoder; every embedding is the L2-normalised [CLS] output.

    Example:

    ```python
    >>> import modeling_gcl  # registers GCL with the Auto classes
    >>> from transformers import AutoModel, AutoProcessor

    >>> model = AutoModel.from_pretrained("path/to/gcl-model")
    >>> processor = AutoProcessor.from_pretrained("path/to/gcl-model")
    >>> inputs = processor(images=[image], text=["a red bicycle"], return_tensors="pt", padding=True)
    >>> out = model(**inputs)
    >>> out.image_embeds.shape, out.text_embeds.shape, out.fused_embeds.shape
    ```
    """

    def __init__(self, config: GCLConfig, encoder: "CLIPModel | GCLVistaEncoder | None" = None):
        super().__init__(config)
        # Creating a GCLConfig resets its sub-configs' attention implementation; push the resolved one back down so
        # the encoder's attention (and its padding masks) dispatch as configured.
        self.config._attn_implementation = self.config._attn_implementation
        # `encoder` lets `from_backbone` wrap already-loaded weights without building a second, random copy.
        if encoder is not None:
            self.encoder = encoder
        elif config.backbone_type == "vista":
            config.vista_config.text_config._attn_implementation = self.config._attn_implementation
            self.encoder = GCLVistaEncoder(config.vista_config, temperature=config.temperature)
        elif config.backbone_type == "dual_encoder":
            self.encoder = GCLDualEncoder(config.dual_encoder_config)
        else:
            self.encoder = CLIPModel._from_config(config.encoder_config)
        self.fusion = GCLScoreFusion(config.fusion, config.projection_dim)
        if config.temperature is not None:
            with torch.no_grad():
                self.encoder.logit_scale.fill_(math.log(1.0 / config.temperature))
        self.encoder.logit_scale.requires_grad_(config.learnable_temperature)
        # SigLIP-style bias of the sigmoid GCL loss; embeddings never use it.
        self.logit_bias = None
        if config.sigmoid_bias_init is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.sigmoid_bias_init)))
        self.post_init()

    def add_logit_bias(self, init_value: float = -10.0) -> None:
        """Give the model the learnable bias of the sigmoid GCL loss (a no-op when it has one): the model of a
        softmax-trained checkpoint or a plain backbone can then be trained with `--loss gcl_sigmoid`."""
        if self.logit_bias is not None:
            return
        self.config.sigmoid_bias_init = float(init_value)
        device = self.encoder.logit_scale.device
        self.logit_bias = nn.Parameter(torch.tensor(float(init_value), device=device))

    def set_learnable_temperature(self, learnable: bool) -> None:
        """Train (or freeze) the logit scale, and record it in the config so a reload keeps the choice."""
        self.config.learnable_temperature = bool(learnable)
        self.encoder.logit_scale.requires_grad_(bool(learnable))

    @classmethod
    def from_backbone(
        cls,
        backbone: "str | CLIPModel",
        fusion: str = "sum",
        temperature: float | None = None,
        learnable_temperature: bool = True,
        **kwargs,
    ) -> "GCLModel":
        r"""
        Wrap a CLIP-family retriever as a `GCLModel`.

        Args:
            backbone (`str` or `CLIPModel`):
                A Hub id (`"openai/clip-vit-base-patch32"`, `"wkcn/TinyCLIP-ViT-8M-16-Text-3M-YFCC15M"`), a local
                directory holding a `CLIPModel`, or a `CLIPModel` instance.
            fusion (`str`, *optional*, defaults to `"sum"`):
                Fused-modality pooling, see [`GCLConfig`].
            temperature (`float`, *optional*):
                Fixed τ; `None` keeps the backbone's learnable logit scale.
            learnable_temperature (`bool`, *optional*, defaults to `True`):
                Whether the logit scale is trained.
            kwargs:
                Further [`GCLConfig`] fields (`loss_pairs`, `loss_weights`, ...). `dtype`, `revision`, `token` and
                `cache_dir` are passed on to `CLIPModel.from_pretrained` when `backbone` is a string.
        """
        load_keys = ("dtype", "revision", "token", "cache_dir", "local_files_only", "attn_implementation")
        load_kwargs = {key: kwargs.pop(key) for key in load_keys if key in kwargs}
        if isinstance(backbone, str):
            backbone = CLIPModel.from_pretrained(backbone, **load_kwargs)
        if not isinstance(backbone, CLIPModel):
            raise TypeError(f"from_backbone expects a CLIPModel or a path/Hub id of one, got {type(backbone).__name__}")
        kwargs.setdefault("attn_implementation", backbone.config._attn_implementation)
        config = GCLConfig(
            encoder_config=backbone.config,
            fusion=fusion,
            temperature=temperature,
            learnable_temperature=learnable_temperature,
            **kwargs,
        )
        return cls(config, encoder=backbone)

    @classmethod
    def from_vista_backbone(
        cls,
        text_model: "str | PreTrainedModel",
        vision_config: "GCLEvaVisionConfig | dict | str | None" = None,
        cls_token_id: int | None = None,
        sep_token_id: int | None = None,
        temperature: float | None = None,
        learnable_temperature: bool | None = None,
        **kwargs,
    ) -> "GCLModel":
        r"""
        Build a VISTA-style `GCLModel` from a pretrained BERT-family text encoder and a (new, randomly initialised)
        EVA02-CLIP vision tower. To load a released Visualized-BGE checkpoint, convert it with `gcl-convert-vista`.

        Args:
            text_model (`str` or `PreTrainedModel`):
                A Hub id or directory of a BERT-family encoder (`"BAAI/bge-base-en-v1.5"`), or a loaded one. Its pooler
                is not used.
            vision_config ([`GCLEvaVisionConfig`], `dict` or `str`, *optional*):
                The vision tower; a preset name (`"eva02-clip-b-16"`, `"eva02-clip-l-14"`) or a config. Defaults to
                EVA02-CLIP-B/16.
            cls_token_id, sep_token_id (`int`, *optional*):
                The ids of [CLS] and [SEP] (`<s>`, `</s>` for XLM-R). Default: read from the text model's tokenizer
                when `text_model` is a path, else the config's `bos/eos_token_id`, else BERT's 101 / 102.
            temperature, learnable_temperature: see [`GCLConfig`]; VISTA's default is a fixed τ = 0.02.
            kwargs:
                Further [`GCLConfig`] fields. `dtype`, `revision`, `token`, `cache_dir`, `local_files_only` and
                `attn_implementation` are passed on to `AutoModel.from_pretrained` when `text_model` is a string.
        """
        load_keys = ("dtype", "revision", "token", "cache_dir", "local_files_only", "attn_implementation")
        load_kwargs = {key: kwargs.pop(key) for key in load_keys if key in kwargs}
        if isinstance(text_model, str):
            if cls_token_id is None or sep_token_id is None:
                from transformers import AutoTokenizer

                tokenizer_kwargs = {k: v for k, v in load_kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")}
                tokenizer = AutoTokenizer.from_pretrained(text_model, **tokenizer_kwargs)
                cls_token_id = tokenizer.cls_token_id if cls_token_id is None else cls_token_id
                sep_token_id = tokenizer.sep_token_id if sep_token_id is None else sep_token_id
            text_model = _load_text_encoder_without_pooler(text_model, **load_kwargs)
        if not isinstance(text_model, PreTrainedModel):
            raise TypeError(f"from_vista_backbone expects a text encoder or its path/Hub id, got {type(text_model).__name__}")
        if getattr(text_model, "pooler", None) is not None:
            text_model.pooler = None  # VISTA pools [CLS] itself; an unused pooler would only waste memory and LoRA targets
        if load_kwargs.get("attn_implementation") not in (None, text_model.config._attn_implementation):
            text_model.set_attn_implementation(load_kwargs["attn_implementation"])  # a loaded module: asked to switch
        attn_implementation = text_model.config._attn_implementation
        # A copy: building the composite config resets its sub-configs' attention implementation, and the caller's
        # configuration object must not change.
        text_config = copy.deepcopy(text_model.config)
        if cls_token_id is None:
            cls_token_id = text_config.bos_token_id if text_config.bos_token_id is not None else 101
        if sep_token_id is None:
            sep_token_id = text_config.eos_token_id if text_config.eos_token_id is not None else 102
        if isinstance(vision_config, str):
            vision_config = GCLEvaVisionConfig.from_preset(vision_config)
        elif isinstance(vision_config, dict):
            vision_config = GCLEvaVisionConfig(**vision_config)
        vista_config = GCLVistaConfig(
            text_config=text_config,
            vision_config=vision_config,
            cls_token_id=cls_token_id,
            sep_token_id=sep_token_id,
        )
        kwargs.setdefault("attn_implementation", attn_implementation)
        config = GCLConfig(
            backbone_type="vista",
            vista_config=vista_config,
            temperature=temperature,
            learnable_temperature=learnable_temperature,
            **kwargs,
        )
        model = cls(config, encoder=GCLVistaEncoder(vista_config, text_model=text_model, temperature=config.temperature))
        return model

    @classmethod
    def from_towers(
        cls,
        vision_model: "str | PreTrainedModel",
        text_model: "str | PreTrainedModel",
        projection_dim: int = 512,
        fusion: str = "sum",
        text_pooling: str | None = None,
        vision_pooling: str = "auto",
        temperature: float | None = None,
        learnable_temperature: bool = True,
        **kwargs,
    ) -> "GCLModel":
        r"""
        Build a dual-encoder `GCLModel` (`backbone_type="dual_encoder"`) from a pretrained vision tower and a pretrained
        BERT-family text tower, each followed by a new linear projection to `projection_dim` (LiT / CLIP from separate
        towers). The processor comes from [`GCLProcessor.from_towers`].

        Args:
            vision_model (`str` or `PreTrainedModel`):
                A Hub id or directory of a transformers vision model (loaded with `AutoModel`: ViT, DINOv2, ConvNeXt,
                CLIP's vision tower, ...) or of a converted EfficientNet-Lite, or a loaded model.
            text_model (`str` or `PreTrainedModel`):
                A Hub id or directory of a BERT-family encoder (`"sentence-transformers/all-MiniLM-L6-v2"`), or a
                loaded one. Its pooler, if any, is dropped.
            projection_dim (`int`, defaults to 512): the shared embedding size.
            fusion (`str`, defaults to `"sum"`): fused-modality pooling, see [`GCLConfig`].
            text_pooling (`str`, *optional*): `"cls"` or `"mean"`. Default: what a sentence-transformers folder's
                `modules.json` / pooling config says (mean for all-MiniLM-L6-v2), else `"cls"`.
            vision_pooling (`str`, defaults to `"auto"`): see [`GCLDualEncoderConfig`].
            temperature (`float`, *optional*): fixed τ; default CLIP's learnable log(1/0.07).
            learnable_temperature (`bool`, defaults to `True`): whether the logit scale is trained.
            kwargs: further [`GCLConfig`] fields. `dtype`, `revision`, `token`, `cache_dir`, `local_files_only` and
                `attn_implementation` are passed on to `AutoModel.from_pretrained` for towers given as strings.
        """
        from .configuration_dual_encoder import GCLDualEncoderConfig
        from .modeling_dual_encoder import load_tower, read_text_pooling

        load_keys = ("dtype", "revision", "token", "cache_dir", "local_files_only", "attn_implementation")
        load_kwargs = {key: kwargs.pop(key) for key in load_keys if key in kwargs}
        if text_pooling is None:
            text_pooling = read_text_pooling(text_model) if isinstance(text_model, str) else "cls"
        vision = load_tower(vision_model, "vision", load_kwargs)
        text = load_tower(text_model, "text", load_kwargs)
        if getattr(text, "pooler", None) is not None:
            text.pooler = None  # the dual encoder pools token states itself; an unused pooler only wastes LoRA targets
        # Copies: building the composite config resets its sub-configs' attention implementation, and the caller's
        # configuration objects must not change.
        dual_config = GCLDualEncoderConfig(
            vision_config=copy.deepcopy(vision.config),
            text_config=copy.deepcopy(text.config),
            projection_dim=projection_dim,
            text_pooling=text_pooling,
            vision_pooling=vision_pooling,
        )
        kwargs.setdefault("attn_implementation", text.config._attn_implementation)
        config = GCLConfig(
            backbone_type="dual_encoder",
            dual_encoder_config=dual_config,
            fusion=fusion,
            temperature=temperature,
            learnable_temperature=learnable_temperature,
            **kwargs,
        )
        return cls(config, encoder=GCLDualEncoder(dual_config, vision_model=vision, text_model=text))

    @property
    def is_vista(self) -> bool:
        return self.config.backbone_type == "vista"

    @property
    def is_dual_encoder(self) -> bool:
        return self.config.backbone_type == "dual_encoder"

    def get_image_features(self, pixel_values: torch.FloatTensor, normalize: bool = True) -> torch.FloatTensor:
        r"""
        Image-only embeddings: `pixel_values` `(batch, 3, height, width)` -> `(batch, projection_dim)`, L2-normalised
        unless `normalize=False` (then the raw projection, as CLIP's `pooler_output`; VISTA's [CLS] hidden state of
        the image with an empty text).
        """
        if self.is_vista or self.is_dual_encoder:
            features = self.encoder.encode_image(pixel_values)
            return l2_normalize(features) if normalize else features
        features = self.encoder.get_image_features(pixel_values=pixel_values).pooler_output
        return l2_normalize(features) if normalize else features

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        normalize: bool = True,
    ) -> torch.FloatTensor:
        r"""
        Text-only embeddings: `input_ids` `(batch, seq_len)` -> `(batch, projection_dim)`, L2-normalised unless
        `normalize=False`.
        """
        if self.is_vista or self.is_dual_encoder:
            features = self.encoder.encode_text(input_ids, attention_mask, position_ids)
            return l2_normalize(features) if normalize else features
        features = self.encoder.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).pooler_output
        return l2_normalize(features) if normalize else features

    def get_fused_features(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        Fused image+text embeddings of the pairs `(pixel_values[j], input_ids[j])`: `(batch, projection_dim)`,
        L2-normalised. For VISTA this is one text-encoder pass over [CLS], the image tokens and the text (`position_ids`
        are then set by the fusion and must be `None`).
        """
        if self.is_vista:
            if position_ids is not None:
                raise ValueError("VISTA sets the position ids of a fused item itself; pass position_ids=None.")
            return l2_normalize(self.encoder.encode_fused(pixel_values, input_ids, attention_mask))
        image_features = self.get_image_features(pixel_values, normalize=False)
        text_features = self.get_text_features(input_ids, attention_mask, position_ids, normalize=False)
        return l2_normalize(self.fusion(image_features, text_features))

    # --- Saving and loading: the CLIP layout for CLIP backbones, the GCL layout for the others ---------------------

    @property
    def uses_clip_layout(self) -> bool:
        """Whether `save_pretrained` writes a native CLIP checkpoint (CLIP / TinyCLIP / UniIR CLIP-SF backbones); VISTA
        and other backbones, which no transformers class can run alone, keep the GCL layout (`model_type: "gcl"`)."""
        return self.config.backbone_type == "clip" and isinstance(self.encoder, CLIPModel)

    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict: dict | None = None,
                        push_to_hub: bool = False, **kwargs):
        r"""
        Save the model so that [`~GCLModel.from_pretrained`] reloads it.

        A CLIP backbone is saved as a **native CLIP checkpoint**, loadable by anything that loads CLIP
        (`CLIPModel.from_pretrained`, `AutoModel`, the zero-shot-image-classification pipeline):
        - `config.json`: the backbone's `CLIPConfig` (`model_type: "clip"`, `architectures: ["CLIPModel"]`) plus a `gcl`
          section (fusion, temperature policy, loss settings, format version) and `auto_map` entries, so
          `AutoModel.from_pretrained(dir, trust_remote_code=True)` builds this class from the copied code;
        - `model.safetensors`: the CLIP weights under CLIP's own names;
        - `gcl_weights.safetensors`: GCL's own parameters (attention fusion, sigmoid logit bias), only when it has any.

        Other backbones (VISTA) are saved in the GCL layout (`model_type: "gcl"`, weights under `encoder.*`). Arguments
        are those of [`~PreTrainedModel.save_pretrained`].
        """
        if not self.uses_clip_layout:
            return super().save_pretrained(save_directory, is_main_process=is_main_process, state_dict=state_dict,
                                           push_to_hub=push_to_hub, **kwargs)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"{save_directory} is a file; save_pretrained needs a directory.")
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "create_pr") if key in kwargs}
        clip_state, gcl_state = split_clip_layout_state_dict(self.state_dict() if state_dict is None else state_dict)
        self.encoder.save_pretrained(save_directory, is_main_process=is_main_process, state_dict=clip_state, **kwargs)
        if is_main_process:
            directory = Path(save_directory)
            if gcl_state:
                tensors = {key: value.detach().contiguous() for key, value in gcl_state.items()}
                save_file(tensors, str(directory / GCL_WEIGHTS_NAME), metadata={"format": "pt"})
            else:  # re-saving into a folder that held an attention fusion's weights must not keep them
                (directory / GCL_WEIGHTS_NAME).unlink(missing_ok=True)
            self._write_clip_layout_config(directory)
            # The sentence-transformers entry files, as `GCLPreTrainedModel.save_pretrained` writes them.
            from .sentence_transformers_files import write_sentence_transformers_files

            write_sentence_transformers_files(save_directory)
        if push_to_hub:
            repo_id = hub_options.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_options)

    def _write_clip_layout_config(self, directory: Path) -> None:
        """Add the `gcl` section, `auto_map` (and `custom_pipelines`, when set) to the `config.json` CLIPModel wrote, and
        copy the remote code (this module, the configuration module and every module they import)."""
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config[GCL_SECTION_KEY] = gcl_section(self.config)
        entry_points = {"auto_map": dict(getattr(self.config, "auto_map", None) or {})}
        for obj in (self.config, self):  # marked by `register_for_auto_class` (library import or remote code)
            if getattr(type(obj), "_auto_class", None) is not None:
                custom_object_save(obj, directory, config=entry_points)
        if entry_points["auto_map"]:
            config["auto_map"] = entry_points["auto_map"]
        if getattr(self.config, "custom_pipelines", None):
            config["custom_pipelines"] = self.config.custom_pipelines
        _write_json_atomic(config_path, config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""
        Load a saved GCL model in either layout: the CLIP layout (a native CLIP checkpoint with a `gcl` section, what
        `save_pretrained` writes for CLIP backbones) or the GCL layout (`model_type: "gcl"`: VISTA, and CLIP models
        saved before the CLIP layout existed). Arguments are those of [`~PreTrainedModel.from_pretrained`].

        Raises `ValueError` naming the key when a CLIP layout's `gcl` section is malformed, or naming
        `gcl_weights.safetensors` when it does not hold exactly the parameters the config's fusion and loss need.
        """
        config_dict = {}
        if pretrained_model_name_or_path is not None:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        if config_dict.get("model_type") == "clip":
            loaded = cls._from_clip_layout(pretrained_model_name_or_path, config_dict, *model_args, **kwargs)
        else:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` returns a tuple
        # Loading materialises fresh parameters, all trainable; a fixed temperature stays fixed.
        model.encoder.logit_scale.requires_grad_(model.config.learnable_temperature)
        return loaded

    @classmethod
    def _from_clip_layout(cls, path, config_dict: dict, *model_args, **kwargs):
        """The CLIP layout: CLIPModel loads its own weights (dtype, device map, attention, Hub arguments as given),
        then the GCL wrapper is built around it and its own parameters are read from `gcl_weights.safetensors`."""
        config = kwargs.pop("config", None)
        if not isinstance(config, GCLConfig):
            source = f"{path}/config.json"
            config = build_gcl_config(gcl_dict_from_clip_layout(config_dict, source=source), source=source)
        output_loading_info = kwargs.pop("output_loading_info", False)
        clip, loading_info = CLIPModel.from_pretrained(path, *model_args, config=config.encoder_config,
                                                       output_loading_info=True, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        model = cls._wrap_clip_checkpoint(clip, config, path, hub_kwargs)
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def from_clip_checkpoint(cls, clip: CLIPModel, **hub_kwargs) -> "GCLModel":
        r"""
        The GCL model of a `CLIPModel` already loaded from a CLIP-layout checkpoint (e.g. by `pipeline(...)` or
        `AutoModel`), without loading its weights again: the `gcl` section of its config and the checkpoint's
        `gcl_weights.safetensors` (from `clip.name_or_path`) complete it.
        """
        source = f"{clip.name_or_path}/config.json"
        gcl_dict = gcl_dict_from_clip_layout(clip.config.to_dict(), source=source)
        return cls._wrap_clip_checkpoint(clip, build_gcl_config(gcl_dict, source=source), clip.name_or_path, hub_kwargs)

    @classmethod
    def _wrap_clip_checkpoint(cls, clip: CLIPModel, config: GCLConfig, path, hub_kwargs: dict) -> "GCLModel":
        trained_logit_scale = clip.logit_scale.detach().clone()
        config._attn_implementation = clip.config._attn_implementation  # as loaded (e.g. `attn_implementation=`)
        model = cls(config, encoder=clip)
        with torch.no_grad():  # the constructor sets a fixed temperature's *initial* value; keep the trained one
            model.encoder.logit_scale.copy_(trained_logit_scale)
        weights_file = cached_file(path, GCL_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        loaded = model.load_gcl_weights(weights_file) if weights_file is not None else []
        needed = sorted(key for key in model.state_dict() if not key.startswith(ENCODER_PREFIX))
        if sorted(loaded) != needed:
            raise ValueError(
                f"{path}: {GCL_WEIGHTS_NAME} holds {loaded or 'nothing'}, but this model (fusion "
                f"{config.fusion!r}, sigmoid_bias_init {config.sigmoid_bias_init!r}) needs {needed}."
            )
        model.config.name_or_path = str(path)
        model.eval()
        model.encoder.logit_scale.requires_grad_(config.learnable_temperature)
        return model

    def load_gcl_weights(self, weights_file: str | os.PathLike) -> list[str]:
        r"""
        Load GCL's own parameters (`fusion.*`, `logit_bias`) from a CLIP layout's `gcl_weights.safetensors` (a file, or
        a saved folder holding one; a folder without one loads nothing). Returns the names loaded.

        `Trainer` restores a checkpoint's `model.safetensors` only (`load_state_dict`, which accepts CLIP's names);
        call this on the same checkpoint folder so a resumed run also restores these parameters.
        """
        weights_file = Path(weights_file)
        if weights_file.is_dir():
            weights_file = weights_file / GCL_WEIGHTS_NAME
            if not weights_file.is_file():
                return []
        tensors = load_file(str(weights_file))
        own = {key for key in self.state_dict() if not key.startswith(ENCODER_PREFIX)}
        unexpected = sorted(set(tensors) - own)
        if unexpected:
            raise ValueError(f"{weights_file} holds {unexpected}, which this model (fusion {self.config.fusion!r}) lacks.")
        reference = self.encoder.logit_scale
        self.fusion.to(device=reference.device, dtype=reference.dtype)
        if self.logit_bias is not None:
            self.logit_bias.data = self.logit_bias.data.to(device=reference.device, dtype=reference.dtype)
        nn.Module.load_state_dict(self, tensors, strict=False)
        return sorted(tensors)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, also accepting the CLIP layout's names (`text_model.*` for `encoder.text_model.*`),
        so `Trainer` resumes from and loads the best of checkpoints saved in the CLIP layout."""
        if self.uses_clip_layout:
            clip_roots = {name.split(".", 1)[0] for name in self.encoder.state_dict()}
            if any(key.split(".", 1)[0] in clip_roots for key in state_dict):
                state_dict = {(ENCODER_PREFIX + key if key.split(".", 1)[0] in clip_roots else key): value
                              for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def get_logit_scale(self) -> torch.Tensor:
        """`1 / τ` as a scalar tensor: `exp(logit_scale)`, clamped at `config.max_logit_scale`."""
        logit_scale = self.encoder.logit_scale
        if not self.config.learnable_temperature:
            logit_scale = logit_scale.detach()
        return logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
    ) -> GCLOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
            Images, as prepared by [`GCLProcessor`].
        input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
            Token ids of the texts. When both inputs are given with the same batch size, row `j` of each forms the
            fused pair `j`; with different batch sizes (e.g. one image and several candidate labels) no fused
            embeddings are computed, only the image–text logits.
        attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*):
            1 for tokens, 0 for padding.
        return_loss (`bool`, *optional*):
            Compute the GCL loss over the batch of pairs (needs both inputs and the `trainer` package of the library).
        """
        image_features = text_features = None
        image_embeds = text_embeds = fused_embeds = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values, normalize=False)
            image_embeds = l2_normalize(image_features)
        if input_ids is not None:
            text_features = self.get_text_features(input_ids, attention_mask, position_ids, normalize=False)
            text_embeds = l2_normalize(text_features)
        logit_scale = self.get_logit_scale()
        logits_per_image = logits_per_text = None
        if image_embeds is not None and text_embeds is not None:
            # CLIP-style image–text logits, so zero-shot classification pipelines work on a GCL model.
            logits_per_text = logit_scale * text_embeds @ image_embeds.t()
            logits_per_image = logits_per_text.t()
            # Fusion pairs row j with row j; broadcasting one image over many texts would silently mis-pair them.
            if image_features.shape[0] == text_features.shape[0]:
                if self.is_vista:  # a third pass: the image tokens inside the text encoder
                    fused_embeds = self.get_fused_features(pixel_values, input_ids, attention_mask, position_ids)
                else:
                    fused_embeds = l2_normalize(self.fusion(image_features, text_features))

        loss = loss_terms = None
        if return_loss:
            if fused_embeds is None:
                raise ValueError(
                    "return_loss=True needs both pixel_values and input_ids with the same batch size (a batch of pairs)."
                )
            try:
                from trainer.losses.gcl import gcl_loss
            except ImportError as error:  # remote code used without the library
                raise ImportError(
                    "GCLModel(return_loss=True) uses the GCL loss of the `gcl-hf` library's `trainer` package; "
                    "install the library to train."
                ) from error
            loss, loss_terms = gcl_loss(
                image_embeds,
                text_embeds,
                fused_embeds,
                temperature=1.0 / logit_scale,
                pairs=self.config.loss_pairs,
                weights=self.config.loss_weights,
                exclude_other_positive=self.config.exclude_other_positive,
                modalities=self.config.loss_modalities,
            )
        return GCLOutput(
            loss=loss,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            fused_embeds=fused_embeds,
            logit_scale=logit_scale,
            loss_terms=loss_terms,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            logit_bias=self.logit_bias,
        )


__all__ = ["GCL_WEIGHTS_NAME", "GCLModel", "GCLPreTrainedModel", "GCLOutput", "GCLScoreFusion", "l2_normalize"]
