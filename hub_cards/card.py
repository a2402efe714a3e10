# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Model cards for GCL models, rendered with huggingface_hub's `ModelCard` from `templates/model_card.md`.

The template holds the prose; this module turns a run (`RunInfo`) into the metadata (`ModelCardData`) and the
Markdown fragments (tables, one-line descriptions) the template places.
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from modeling_gcl.configuration_gcl import gcl_dict_from_clip_layout, is_clip_layout

from .redact import LocalPathRedactor, is_local_path, public_name
from .run_record import RunInfo, read_run

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card.md"
CITATION_FILE = TEMPLATES_DIR / "citation.bib"
PAPER_ARXIV_ID = "2509.25638"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ARXIV_ID}"

TAGS = ("gcl", "generalized-contrastive-learning", "multimodal-retrieval", "image-text-retrieval",
        f"arxiv:{PAPER_ARXIV_ID}")
CLIP_TAGS = ("clip",)
ADAPTER_TAGS = ("peft", "lora")

# Hub widget examples per pipeline tag: what the widget on the model page sends to the pipeline of that tag. Only a
# native CLIP checkpoint gets one, and only for zero-shot classification: that is the one widget the Hub can serve with
# transformers' own code (transformers' feature-extraction pipeline cannot embed images or fused items, and the
# repository's custom pipeline needs trust_remote_code, which hosted inference refuses).
WIDGETS = {
    "zero-shot-image-classification": [
        {
            "src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/cat-dog-music.png",
            "candidate_labels": "playing music, playing sports",
            "example_title": "Cat & dog",
        },
        {
            "src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/airport.jpg",
            "candidate_labels": "an airport, a harbour, a railway station",
            "example_title": "Airport",
        },
    ],
    "feature-extraction": None,
}
PIPELINE_TAGS = tuple(WIDGETS)
# The metric of the held-out modality-matrix heatmap an export draws when the run saved none.
HOLDOUT_HEATMAP_METRIC = "hit@1"
DEFAULT_PIPELINE_TAG = "zero-shot-image-classification"  # of a native CLIP checkpoint
CUSTOM_CODE_PIPELINE_TAG = "feature-extraction"  # of a model only its own code runs (VISTA, dual encoders)

# The one line that turns CLIP's two projections into the fused embedding, per fusion (`F` is torch.nn.functional).
FUSED_EMBEDDING_CODE = {
    "sum": "F.normalize(image_features + text_features, dim=-1)",
    "mean": "F.normalize((image_features + text_features) / 2, dim=-1)",
    "normalized_sum": "F.normalize(F.normalize(image_features, dim=-1) + F.normalize(text_features, dim=-1), dim=-1)",
}

MODALITY_NAMES = {"i": "image", "t": "text", "it": "image+text"}
FUSION_DESCRIPTIONS = {
    "sum": "`sum` — CLIP-SF score fusion (as UniIR): the *unnormalised* image and text projections summed, then "
           "L2-normalised",
    "normalized_sum": "`normalized_sum` — each projection L2-normalised, summed, then L2-normalised",
    "mean": "`mean` — the mean of the unnormalised projections, then L2-normalised (the same direction as `sum`)",
    "tokens": "`tokens` — VISTA: the image's patch tokens are inserted after the text's [CLS] and the joint sequence "
              "runs through the text encoder; the [CLS] output, L2-normalised, is the embedding",
    "attention": "`attention` — learnable attention pooling over the two projections (a linear score per vector, "
                 "softmax over the two, weighted sum), then L2-normalised",
}
DEFAULT_LOSS_PAIRS = ("i2t", "i2it", "t2i", "t2it", "it2i", "it2t")

logger = logging.getLogger(__name__)


def modality_arrow(cell: str) -> str:
    """`"it2t"` -> `"it → t"`."""
    query, candidate = cell.split("2")
    return f"{query} → {candidate}"


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def negatives_per_anchor(loss: str, per_device_batch_size: int | None, world_size: int = 1,
                         gather_across_devices: bool = True) -> str:
    """The number of negatives each anchor is contrasted with, as a formula and its value for this run.

    GCL scores each anchor against all 3N items of the batch but itself (3N − 1); CLIP's InfoNCE against the N items
    of the other modality, its positive included as the only non-negative (N − 1). N counts every device's pairs
    when the loss gathers them.
    """
    formula, factor = ("3N − 1", 3) if loss in ("gcl", "gcl_sigmoid") else ("N − 1", 1)
    if per_device_batch_size is None:
        return f"{formula} (N: pairs per batch; not recorded for this run)"
    devices = world_size if gather_across_devices else 1
    n = per_device_batch_size * devices
    where = f"N = {per_device_batch_size} pairs per device" + (f" × {devices} devices" if devices > 1 else "")
    return f"{formula} = {factor * n - 1} ({where}; gradient accumulation adds none)"


def temperature_policy(config: dict[str, Any], trained_logit_scale: float | None = None) -> str:
    """How τ was set (learnable CLIP logit scale, or fixed), and its value after training when known."""
    temperature = config.get("temperature")
    learnable = config.get("learnable_temperature", True)
    max_scale = config.get("max_logit_scale", 100.0)
    if temperature is None:
        policy = f"learnable: the backbone's CLIP logit scale, 1/τ clamped at {max_scale:g}"
    elif learnable:
        policy = f"learnable, initialised at τ = {temperature:g} (1/τ clamped at {max_scale:g})"
    else:
        policy = f"fixed τ = {temperature:g}"
    if trained_logit_scale is not None and (temperature is None or learnable):
        policy += f"; τ = {1.0 / min(trained_logit_scale, max_scale):.4g} after training"
    return policy


METHOD_NAMES = {"gcl": "GCL", "gcl_sigmoid": "sigmoid GCL", "clip": "the CLIP (+CL) baseline loss"}


def method_name(loss: str) -> str:
    return METHOD_NAMES.get(loss, f"the `{loss}` loss")


def loss_description(loss: str, config: dict[str, Any]) -> str:
    if loss == "gcl_sigmoid":
        bias = config.get("sigmoid_bias_init")
        return ("`gcl_sigmoid` — sigmoid GCL: SigLIP's pairwise sigmoid loss over the 3N × 3N cells of "
                "[E_i; E_t; E_it], positives the same pair's other modalities, with a learnable temperature and bias"
                + (f" (bias initialised at {bias:g})" if bias is not None else ""))
    if loss == "clip":
        return ("`clip` — the paper's “+CL” baseline: symmetric InfoNCE over the N × N image↔text matrix (no fused "
                "items)")
    text = ("`gcl` — Generalized Contrastive Learning (paper Eq. 2): multi-positive InfoNCE over the 3N items "
            "[E_i; E_t; E_it] of the batch, each anchor's positives being the same pair's other modalities")
    if config.get("exclude_other_positive"):
        text += "; each anchor's other positive is left out of its denominator"
    else:
        text += "; the anchor's other positive stays in the denominator, as in Eq. 2"
    modalities = config.get("loss_modalities") or ["i", "t", "it"]
    if list(modalities) != ["i", "t", "it"]:
        text += f"; the softmax spans only the {', '.join(MODALITY_NAMES[m] for m in modalities)} items (an ablation)"
    return text


def loss_pairs_table(loss: str, config: dict[str, Any]) -> str:
    """The positive pairs the GCL loss counts and their weights (all six, weight 1, in the paper)."""
    if loss not in ("gcl", "gcl_sigmoid"):
        return ""
    pairs = config.get("loss_pairs") or list(DEFAULT_LOSS_PAIRS)
    weights = config.get("loss_weights") or [1.0] * len(pairs)
    rows = []
    for pair, weight in zip(pairs, weights):
        anchor, positive = pair.split("2")
        rows.append([f"`{pair}`", f"{MODALITY_NAMES[anchor]} → {MODALITY_NAMES[positive]}", f"{weight:g}"])
    table = _markdown_table(["loss term", "anchor → positive", "weight"], rows)
    left_out = [pair for pair in DEFAULT_LOSS_PAIRS if pair not in pairs]
    note = ("All six ordered pairs of different modalities, equally weighted, as in the paper."
            if not left_out and len(set(weights)) == 1
            else "An ablation of the paper's six equally weighted pairs"
                 + (f" (left out: {', '.join(f'`{p}`' for p in left_out)})" if left_out else "")
                 + ". The denominator always spans all 3N − 1 other items.")
    return f"{table}\n\nThe loss is the weighted mean of these terms. {note}"


def backbone_description(config: dict[str, Any]) -> str:
    """One line on the wrapped backbone, from the saved `config.json` (CLIP dual encoder or VISTA)."""
    if config.get("backbone_type") == "vista":
        vista = config.get("vista_config") or {}
        vision, text = vista.get("vision_config") or {}, vista.get("text_config") or {}
        return (
            f"VISTA (Visualized-BGE) — text: `{text.get('model_type', 'bert')}` encoder, "
            f"{text.get('num_hidden_layers')} layers of width {text.get('hidden_size')}; vision: EVA02-CLIP tower, "
            f"{vision.get('num_hidden_layers')} layers of width {vision.get('hidden_size')}, {vision.get('image_size')}-px "
            f"images, {vision.get('patch_size')}-px patches, whose patch tokens enter the text encoder after [CLS]"
        )
    encoder = config.get("encoder_config") or {}
    vision, text = encoder.get("vision_config") or {}, encoder.get("text_config") or {}
    if not vision or not text:  # an unknown layout: name the backbone only
        return f"`{encoder.get('model_type', 'unknown')}` encoder" if encoder else "not recorded"
    return (
        f"{encoder.get('model_type', 'clip').upper()} dual encoder — vision: {vision.get('num_hidden_layers')} layers "
        f"of width {vision.get('hidden_size')}, {vision.get('image_size')}-px images, {vision.get('patch_size')}-px "
        f"patches; text: {text.get('num_hidden_layers')} layers of width {text.get('hidden_size')}, "
        f"{text.get('max_position_embeddings')} tokens; shared projection of dimension {encoder.get('projection_dim')}"
    )


def embedding_dim(config: dict[str, Any]) -> int | str:
    """The size of the shared embedding space: CLIP's projection, VISTA's text hidden size."""
    if config.get("backbone_type") == "vista":
        return ((config.get("vista_config") or {}).get("text_config") or {}).get("hidden_size", "d")
    return (config.get("encoder_config") or {}).get("projection_dim", "d")


def display_name(name: str) -> str:
    """What a card shows for a dataset or model: a Hub id as it is, a local path as its folder name only."""
    return public_name(name) if is_local_path(name) else name


def is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repository id rather than a local path or a bundled model's name (cards may
    only link Hub ids)."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)  # e.g. "efficientnet-lite0+all-MiniLM-L6-v2" (gcl-train's bundled towers) is not one
    except HFValidationError:
        return False
    return name.count("/") <= 1 and " " not in name


def holdout_table(holdout: dict[str, Any] | None) -> str:
    """The before/after modality-matrix table of `retrieval_holdout.json` (hit@k in %)."""
    if not holdout or not holdout.get("after"):
        return ""
    phases = [phase for phase in ("before", "after") if holdout.get(phase)]
    cells = list(holdout["after"])
    ks = list(holdout["after"][cells[0]])
    header = ["cell"] + [f"{phase} {k}" for phase in phases for k in ks]
    rows = [[modality_arrow(cell)] + [_format_number(holdout[phase][cell].get(k, "")) for phase in phases for k in ks]
            for cell in cells]
    return _markdown_table(header, rows)


def _numeric_leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], float]]:
    if isinstance(tree, bool):
        return []
    if isinstance(tree, (int, float)):
        return [(path, float(tree))] if math.isfinite(tree) else []  # gcl-eval writes NaN for undefined cells
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in _numeric_leaves(value, path + (str(key),))]
    return []


@dataclass
class EvaluationMetrics:
    """An evaluation `metrics.json`, as `gcl-eval` writes it (read defensively: any JSON object with numbers works).

    Fields used: `"dataset"` (a name, or `{"name", "type", "split", "config"}`), `"task"`, `"suite"`, the metrics
    under `"results"` (every number, nested as `{row: {metric: value}}`, e.g. `{"t2i": {"hit@1": 12.5}}` or
    `{"mscoco_t2i": {"hit@5": 80.8}}`; without `"results"`, the numbers of the rest of the file), an optional
    `"average"` (`{metric: value}`: what the model-index reports when present, instead of every row) and an optional
    `"modality_gap"` (`{measure: {modality pair: value}}`).
    """

    dataset_name: str
    dataset_type: str
    dataset_split: str | None
    dataset_config: str | None
    task_name: str
    leaves: list[tuple[tuple[str, ...], float]]
    suite: str | None = None
    average: dict[str, float] | None = None
    modality_gap: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_name: str = "evaluation", where: str = "metrics") -> "EvaluationMetrics":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: an evaluation metrics file must hold a JSON object.")
        dataset = data.get("dataset") or default_name
        dataset = {"name": str(dataset)} if not isinstance(dataset, dict) else dict(dataset)
        if "results" in data:
            results = data["results"]
        else:
            results = {k: v for k, v in data.items() if k not in ("dataset", "task", "suite", "model", "num_pairs")}
        leaves = _numeric_leaves(results)
        if not leaves:
            raise ValueError(f"{where}: no numeric metrics found.")
        average = data.get("average")
        average = {str(k): float(v) for k, v in average.items() if _is_number(v)} if isinstance(average, dict) else None
        gap = data.get("modality_gap")
        gap = ({str(kind): {str(pair): float(v) for pair, v in values.items() if _is_number(v)}
                for kind, values in gap.items() if isinstance(values, dict)} if isinstance(gap, dict) else None)
        suite = data.get("suite")
        return cls(
            dataset_name=display_name(str(dataset.get("name", default_name))),
            dataset_type=display_name(str(dataset.get("type", dataset.get("name", default_name)))),
            dataset_split=dataset.get("split"),
            dataset_config=dataset.get("config"),
            task_name=str(data.get("task", "Multimodal retrieval")),
            leaves=leaves,
            suite=str(suite) if suite else None,
            average=average or None,
            modality_gap=gap or None,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "EvaluationMetrics":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return cls.from_dict(data, default_name=Path(path).resolve().parent.name or "evaluation", where=str(path))

    @property
    def title(self) -> str:
        split = f", split `{self.dataset_split}`" if self.dataset_split else ""
        suite = f" (`gcl-eval --suite {self.suite}`)" if self.suite else ""
        return f"**{self.dataset_name}**{split}{suite}"

    def table(self) -> str:
        """Rows: the path above each metric (a modality cell `t2i` shown as `t → i`); columns: the metric names, in
        order of first appearance. Then the average and the modality gap, when the file has them."""
        metrics = list(dict.fromkeys(path[-1] for path, _ in self.leaves))
        rows: dict[str, dict[str, float]] = {}
        for path, value in self.leaves:
            label = " / ".join(_row_label(part) for part in path[:-1]) or "all"
            rows.setdefault(label, {})[path[-1]] = value
        body = [[row] + [_format_number(values[m]) if m in values else "" for m in metrics] for row, values in rows.items()]
        parts = [f"{self.title}:", _markdown_table([""] + metrics, body)]
        if self.average:
            parts += ["Average:", _markdown_table(list(self.average), [[_format_number(v) for v in self.average.values()]])]
        if self.modality_gap:
            pairs = list(dict.fromkeys(pair for values in self.modality_gap.values() for pair in values))
            gap_rows = [[pair.replace("-", " / ")] + [f"{self.modality_gap[kind].get(pair, float('nan')):.3f}"
                                                      for kind in self.modality_gap] for pair in pairs]
            parts += ["Modality gap (`centroid_distance`: distance between the modalities' mean embeddings; "
                      "`matched_cosine`: mean cosine of the two embeddings of the same pair):",
                      _markdown_table(["modalities", *self.modality_gap], gap_rows)]
        return "\n\n".join(parts)

    def eval_results(self) -> list[EvalResult]:
        """model-index entries: the average when the file has one (a benchmark of many tasks), else every metric."""
        leaves = [((name,), value) for name, value in self.average.items()] if self.average else self.leaves
        return [
            EvalResult(
                task_type="feature-extraction",
                task_name=self.task_name,
                dataset_type=self.dataset_type,
                dataset_name=self.dataset_name,
                dataset_split=self.dataset_split,
                dataset_config=self.dataset_config,
                metric_type=path[-1],
                metric_name=f"average {path[-1]}" if self.average else " ".join(_row_label(part) for part in path),
                metric_value=value,
            )
            for path, value in leaves
        ]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _row_label(part: str) -> str:
    """A modality cell (`"it2t"`) as `"it → t"`; anything else unchanged."""
    if "2" in part and all(side in MODALITY_NAMES for side in part.split("2", 1)):
        return modality_arrow(part)
    return part


def holdout_eval_results(run: RunInfo, dataset_name: str) -> list[EvalResult]:
    """model-index entries for `gcl-train`'s held-out modality matrix (after training)."""
    after = (run.holdout or {}).get("after") or {}
    return [
        EvalResult(
            task_type="feature-extraction",
            task_name="Multimodal retrieval (modality matrix)",
            dataset_type=dataset_name,
            dataset_name=f"{dataset_name} (held-out pairs)",
            dataset_split="holdout",
            metric_type=metric,
            metric_name=f"{_row_label(cell)} {metric}",
            metric_value=float(value),
        )
        for cell, values in after.items() if isinstance(values, dict)
        for metric, value in values.items() if _is_number(value)
    ]


def _trained_logit_scale(output_dir: Path) -> float | None:
    """exp(`encoder.logit_scale`) read from the saved safetensors (one tensor, not the whole model)."""
    from safetensors import safe_open

    for key in ("logit_scale", "encoder.logit_scale"):  # the CLIP layout's name, then the GCL layout's
        weights = output_dir / "model.safetensors"
        index = output_dir / "model.safetensors.index.json"
        if index.is_file():
            with open(index, encoding="utf-8") as handle:
                shard = json.load(handle)["weight_map"].get(key)
            weights = output_dir / shard if shard else None
        if weights is None or not weights.is_file():
            continue
        with safe_open(str(weights), framework="pt") as handle:
            if key in handle.keys():
                return float(handle.get_tensor(key).float().exp())
    return None


def _hyperparameters_text(run: RunInfo) -> str:
    if run.record is not None:
        hyperparameters = LocalPathRedactor([run.output_dir]).redact_json(run.record.get("hyperparameters") or {})
        if not hyperparameters:
            return "All `GCLTrainingArguments` defaults."
        rows = [[f"`{name}`", f"`{json.dumps(value)}`"] for name, value in sorted(hyperparameters.items())]
        return "The arguments that differ from `GCLTrainingArguments`' defaults:\n\n" + _markdown_table(
            ["argument", "value"], rows)
    state = run.trainer_state
    if state:
        rows = [[f"`{k}`", state[k]] for k in ("max_steps", "train_batch_size", "num_train_epochs") if k in state]
        return ("This run has no `gcl_training.json`, so only what the Trainer's `trainer_state.json` records is "
                "known:\n\n" + _markdown_table(["argument", "value"], rows))
    return "Not recorded for this run."


def _dataset_text(run: RunInfo, datasets: list[str] | None) -> str:
    if datasets:
        return ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" if is_hub_id(d) else f"`{display_name(d)}`"
                         for d in datasets)
    record = run.record or {}
    if record and record.get("dataset") is None:
        return "the openclipart sample bundled with gcl-hf (public-domain clip-art images with captions)"
    if record.get("dataset"):
        dataset = str(record["dataset"])
        if is_hub_id(dataset):
            return f"[{dataset}](https://huggingface.co/datasets/{dataset})"
        return f"`{display_name(dataset)}` (local data)"
    return "data not recorded for this run"


def _training_text(run: RunInfo, datasets: list[str] | None) -> str:
    record = run.record or {}
    method = method_name(run.loss)
    steps = run.max_steps
    parts = [f"Trained with {method} on {_dataset_text(run, datasets)}"]
    if record.get("train_pairs"):
        held_out = f", {record['holdout_pairs']} more held out" if record.get("holdout_pairs") else ""
        parts.append(f", {record['train_pairs']} pairs{held_out},")
    if steps:
        parts.append(f" for {steps} optimizer steps")
    if run.per_device_batch_size:
        parts.append(f" of {run.per_device_batch_size} image–caption pairs per device")
    text = "".join(parts) + "."
    if record.get("use_lora"):
        text += " Only LoRA adapters (and the parameters listed as extra trainables) were trained."
    if record.get("mini_batch_size"):
        text += (f" The loss was cached (GradCache, mini-batches of {record['mini_batch_size']}): same loss and "
                 "gradients as one pass over the full batch.")
    return text


def _holdout_text(run: RunInfo) -> str:
    table = holdout_table(run.holdout)
    if not table:
        return "No held-out retrieval was recorded for this run (`retrieval_holdout.json` is absent)."
    pairs = (run.record or {}).get("holdout_pairs")
    count = f"{pairs} image–caption pairs" if pairs else "Image–caption pairs"
    chance = f" Random chance is hit@1 = {100 / pairs:.1f}." if pairs else ""
    return (
        f"{count} held out from the training data. Queries and candidates of each modality are built from the same "
        "pairs, and each cell reports `hit@k` (%): 1 when the query's own pair is among the top k candidates, averaged "
        "over queries (what UniIR and M-BEIR call Recall@k). Cells are query → candidate; `it` is the fused "
        f"image+text item.{chance}\n\n{table}"
    )


def _heatmap_caption(run: RunInfo) -> str:
    """What the held-out heatmap shows."""
    metric = HOLDOUT_HEATMAP_METRIC
    return f"Held-out modality matrix after training, {metric} (%), query → candidate"


def _summary(run: RunInfo, base_model: str | None, from_scratch: bool, is_adapter: bool) -> str:
    what = "A LoRA adapter for a universal multimodal retriever" if is_adapter else "A universal multimodal retriever"
    origin = ("trained from random initialisation" if from_scratch
              else f"fine-tuned from `{display_name(base_model)}`" if base_model else "trained")
    return (
        f"{what} {origin} with **Generalized Contrastive Learning** (GCL; Lee et al., NeurIPS 2025, "
        f"[arXiv:{PAPER_ARXIV_ID}]({PAPER_URL})). GCL contrasts every ordered pair of different modalities — image, "
        "text and fused image+text — across the whole batch, using only image–caption pairs, which pulls the three "
        "modalities into one space (CLIP-style training leaves fused items apart: the modality gap)."
    )


def _provenance_warning(run: RunInfo, from_scratch: bool) -> str:
    if not from_scratch:
        return ""
    steps = f", and for only {run.max_steps} steps" if run.max_steps else ""
    return (
        f"This model was trained from **random initialisation**, with no pretrained weights{steps} (gcl-train's "
        "offline demo on the small CLIP it bundles). Its numbers show that GCL runs and learns; it is **not** a "
        "useful retriever. Fine-tune a pretrained CLIP (`gcl-train --model_name_or_path "
        "openai/clip-vit-base-patch32`) for real use."
    )


def _limitations(from_scratch: bool) -> str:
    text = ("Retrieval quality is bounded by the backbone and by the training data: GCL aligns modalities on the "
            "image–caption pairs it sees and inherits the backbone's biases. Captions longer than the tokenizer's "
            "maximum length (77 tokens for CLIP) are truncated.")
    if from_scratch:
        text = "Trained from scratch on a few hundred pairs for a demonstration; not for use. " + text
    return text


def _dataset_label(run: RunInfo, datasets: list[str] | None) -> str:
    """A short name of the training data, for the held-out results in the model-index."""
    if datasets:
        return display_name(datasets[0])
    record = run.record or {}
    if record and record.get("dataset") is None:
        return "openclipart_sample"
    return display_name(str(record.get("dataset") or "training data"))


@dataclass
class RepositoryKind:
    """What the published repository is, read from its own files: which code can run it, hence which metadata and
    usage snippets are true for it."""

    native_clip: bool  # a CLIP checkpoint that transformers runs without custom code (the CLIP layout)
    backbone_type: str  # "clip", "vista", "dual_encoder"
    fusion: str
    sentence_transformers: str | None  # the `SentenceTransformer(...)` call that loads it, when it has modules.json

    @property
    def fused_embedding_code(self) -> str | None:
        """The one line giving the fused embedding from `get_image_features` / `get_text_features`, when there is one."""
        return FUSED_EMBEDDING_CODE.get(self.fusion) if self.native_clip else None


def repository_kind(config: dict[str, Any], repo_dir: Path | None, repo_id: str) -> RepositoryKind:
    """Classify a model repository from its `config.json` (either layout) and `modules.json` (sentence-transformers)."""
    native = is_clip_layout(config)
    gcl_config = gcl_dict_from_clip_layout(config) if native else config
    st_call = None
    modules_file = None if repo_dir is None else Path(repo_dir) / "modules.json"
    if modules_file is not None and modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            types = [str(module.get("type", "")) for module in modules]
        except (ValueError, AttributeError, TypeError):
            types = []
        if types:
            # A module type outside sentence_transformers is code from the repository: it needs trust_remote_code.
            remote = any(not module_type.startswith("sentence_transformers.") for module_type in types)
            st_call = f'SentenceTransformer("{repo_id}"' + (", trust_remote_code=True" if remote else "") + ")"
    return RepositoryKind(native_clip=native, backbone_type=str(gcl_config.get("backbone_type", "clip")),
                          fusion=str(gcl_config.get("fusion", "sum")), sentence_transformers=st_call)


def default_pipeline_tag(kind: RepositoryKind) -> str:
    return DEFAULT_PIPELINE_TAG if kind.native_clip else CUSTOM_CODE_PIPELINE_TAG


def build_card_data(
    run: RunInfo,
    repo_id: str,
    *,
    base_model: str | None,
    datasets: list[str] | None,
    license: str | None,
    pipeline_tag: str,
    evaluations: list[tuple[EvaluationMetrics, list[str]]],
    is_adapter: bool,
    kind: RepositoryKind | None = None,
) -> ModelCardData:
    """The card's YAML metadata: library, pipeline tag and widget, tags, base model, datasets, licence, and the
    model-index (the held-out modality matrix after training, then every evaluation).

    Only what a page can really run is claimed: a native CLIP checkpoint is a `transformers` model with the zero-shot
    widget; a model only its own code runs (VISTA, dual encoders) gets no widget, and names sentence-transformers as
    its library when it has `modules.json`."""
    kind = kind or repository_kind(run.config, run.output_dir, repo_id)
    hub_datasets = [d for d in (datasets or []) if is_hub_id(d)]
    record_dataset = (run.record or {}).get("dataset")
    if not datasets and is_hub_id(record_dataset):
        hub_datasets = [record_dataset]
    eval_results = holdout_eval_results(run, _dataset_label(run, datasets))
    for evaluation, _ in evaluations:
        eval_results += evaluation.eval_results()
    if is_adapter:
        library_name = "peft"
    elif kind.native_clip or kind.sentence_transformers is None:
        library_name = "transformers"
    else:
        library_name = "sentence-transformers"
    servable = kind.native_clip and not is_adapter  # the Hub runs it with transformers' own code
    tags = list(TAGS) + (list(CLIP_TAGS) if kind.backbone_type == "clip" else [])
    tags += list(ADAPTER_TAGS) if is_adapter else []
    tags += ["sentence-transformers"] if kind.sentence_transformers and library_name != "sentence-transformers" else []
    return ModelCardData(
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=tags,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        license=license,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        widget=WIDGETS[pipeline_tag] if servable else None,
    )


def load_evaluations(
    run: RunInfo, eval_metrics: str | os.PathLike | None = None
) -> list[tuple[EvaluationMetrics, list[str]]]:
    """The evaluations a card reports, each with its plots (paths relative to the repository root): `eval_metrics` (a
    file the user names: errors are raised; no plots) and the `gcl-eval` outputs found in the run directory (another
    tool's files: unusable ones are skipped with a warning)."""
    evaluations = [(EvaluationMetrics.from_file(eval_metrics), [])] if eval_metrics else []
    for output in run.evaluations:
        where = output.directory / "metrics.json"
        try:
            metrics = EvaluationMetrics.from_dict(output.metrics, default_name=output.directory.name, where=str(where))
        except (ValueError, TypeError, AttributeError) as error:
            logger.warning("Not reporting %s in the model card: %s", where, error)
            continue
        evaluations.append((metrics, [image.relative_to(run.output_dir).as_posix() for image in output.images]))
    return evaluations


def _evaluation_sections(evaluations: list[tuple[EvaluationMetrics, list[str]]]) -> str:
    """Each evaluation's tables, followed by its plots."""
    sections = []
    for metrics, images in evaluations:
        sections.append(metrics.table())
        sections += [f"![{Path(image).stem}]({image})" for image in images]
    return "\n\n".join(sections)


def render_model_card(
    output_dir: str | os.PathLike | RunInfo,
    repo_id: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    eval_metrics: str | os.PathLike | None = None,
    pipeline_tag: str | None = None,
    lora: str | None = None,
    library_url: str | None = None,
    heatmap: str | None = None,
    template_path: str | os.PathLike = MODEL_CARD_TEMPLATE,
    repo_dir: str | os.PathLike | None = None,
) -> ModelCard:
    r"""
    Render the model card of a `gcl-train` output directory.

    Args:
        output_dir: the run's directory, or a `RunInfo` read from it.
        repo_id: `org/name` the card is written for (used in the usage code).
        base_model: the Hub id trained from; default: the one in `gcl_training.json`.
        datasets: Hub dataset ids trained on; default: the one in `gcl_training.json`, when it is a Hub id.
        license: the model's licence id (`apache-2.0`, `mit`, ...); default: `apache-2.0` for a model trained from
            scratch with gcl-hf, none otherwise (a fine-tune inherits its base model's licence: pass it).
        eval_metrics: an evaluation `metrics.json` to report (see `EvaluationMetrics`) and put in the model-index.
        pipeline_tag: the model's Hub task, `zero-shot-image-classification` or `feature-extraction`; default: the
            former for a native CLIP checkpoint (which also gets the zero-shot widget), the latter otherwise.
        lora: `"adapter"` for the card of a LoRA adapter repository, else the card of a full model.
        library_url: where gcl-hf is published, linked from the card when given.
        heatmap: the repository path of a heatmap of the held-out modality matrix; default: the one saved in the run
            directory, if any.
        repo_dir: the repository's files (an export directory), whose `config.json` and `modules.json` decide what
            the card claims; default: the run directory.
    """
    if pipeline_tag is not None and pipeline_tag not in WIDGETS:
        raise ValueError(f"pipeline_tag {pipeline_tag!r} is not one of {', '.join(PIPELINE_TAGS)}.")
    run = output_dir if isinstance(output_dir, RunInfo) else read_run(output_dir)
    repo_dir = Path(repo_dir) if repo_dir is not None else run.output_dir
    repo_config_file = repo_dir / "config.json"
    repo_config = json.loads(repo_config_file.read_text(encoding="utf-8")) if repo_config_file.is_file() else run.config
    kind = repository_kind(repo_config, repo_dir, repo_id)
    pipeline_tag = pipeline_tag or default_pipeline_tag(kind)
    record = run.record or {}
    base_model = base_model or record.get("base_model")
    from_scratch = bool(record.get("from_scratch")) and base_model is None
    if license is None and from_scratch:
        license = "apache-2.0"
    is_adapter = lora == "adapter"
    evaluations = load_evaluations(run, eval_metrics)
    # The GCL fields, whichever layout the run saved (a CLIP layout's `gcl` section, or model_type "gcl").
    config = gcl_dict_from_clip_layout(run.config) if is_clip_layout(run.config) else run.config
    fusion = config.get("fusion", "sum")
    trained_scale = _trained_logit_scale(run.output_dir) if run.has_merged_model else None

    card_data = build_card_data(run, repo_id, base_model=base_model, datasets=datasets, license=license,
                                pipeline_tag=pipeline_tag, evaluations=evaluations, is_adapter=is_adapter, kind=kind)
    if base_model:
        base_model_text = (f"[{base_model}](https://huggingface.co/{base_model})" if is_hub_id(base_model)
                           else f"`{display_name(base_model)}` (a local model)")
    else:
        base_model_text = ("none — randomly initialised" if from_scratch
                           else "not recorded (pass `--base_model` to `gcl-push`)")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        title=repo_id.split("/")[-1],
        summary=_summary(run, base_model, from_scratch, is_adapter),
        provenance_warning=_provenance_warning(run, from_scratch),
        repo_id=repo_id,
        base_model=base_model if is_hub_id(base_model) else None,  # the usage code names only a Hub id
        base_model_text=base_model_text,
        backbone=backbone_description(config),
        method_text=method_name(run.loss).removeprefix("the ").removesuffix(" loss")
        + (", LoRA" if record.get("use_lora") else ""),
        library_link=f"[gcl-hf]({library_url})" if library_url else "gcl-hf",
        dim=embedding_dim(config),
        fusion=fusion,
        fusion_text=FUSION_DESCRIPTIONS.get(fusion, f"`{fusion}`"),
        temperature_text=temperature_policy(config, trained_scale) if config else "not recorded",
        loss_text=loss_description(run.loss, config),
        loss_pairs_table=loss_pairs_table(run.loss, config),
        negatives_text=negatives_per_anchor(run.loss, run.per_device_batch_size, record.get("world_size", 1),
                                            record.get("gather_across_devices", True)),
        training_text=_training_text(run, datasets),
        hyperparameters_text=_hyperparameters_text(run),
        holdout_text=_holdout_text(run),
        heatmap=heatmap or (run.heatmap.name if run.heatmap else None),
        heatmap_caption=_heatmap_caption(run),
        eval_tables=_evaluation_sections(evaluations),
        limitations=_limitations(from_scratch),
        citation=CITATION_FILE.read_text(encoding="utf-8").strip(),
        is_adapter=is_adapter,
        pipeline_tag=pipeline_tag,
        native_clip=kind.native_clip,
        servable=kind.native_clip and not is_adapter,
        fused_embedding_code=kind.fused_embedding_code,
        sentence_transformers_call=kind.sentence_transformers,
        backbone_name={"vista": "VISTA", "dual_encoder": "dual-encoder"}.get(kind.backbone_type, kind.backbone_type),
    )
