# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Model cards and Hub publishing for GCL models.

    from hub_cards import render_model_card, prepare_export_dir, push_to_hub

- `render_model_card(output_dir, repo_id)`: the card of a `gcl-train` run (huggingface_hub `ModelCard`).
- `prepare_export_dir(output_dir, export_dir, repo_id)`: exactly the files a push uploads (model or LoRA adapter,
  processor, remote code, card), written atomically; `verify_remote_code(export_dir)` checks its code is complete.
- `push_to_hub(output_dir, repo_id)`: push them in one commit; `gcl-push` is its command line (`hub_cards.cli`).
- `take_over_push_to_hub(training_args)`: `gcl-train --push_to_hub` checks the request before training and pushes
  the saved output with `push_to_hub` after it.
- `write_training_record(output_dir, training_args)`: save what the card reports about a run (`gcl_training.json`).
"""

from .card import DEFAULT_PIPELINE_TAG, PIPELINE_TAGS, EvaluationMetrics, render_model_card
from .export import Export, RemoteCodeError, prepare_export_dir, verify_remote_code
from .publish import HubPublishError, push_to_hub, take_over_push_to_hub
from .run_record import TRAINING_RECORD_FILE, RunInfo, read_run, write_training_record

__all__ = [
    "DEFAULT_PIPELINE_TAG",
    "PIPELINE_TAGS",
    "TRAINING_RECORD_FILE",
    "EvaluationMetrics",
    "Export",
    "HubPublishError",
    "RemoteCodeError",
    "RunInfo",
    "prepare_export_dir",
    "push_to_hub",
    "read_run",
    "render_model_card",
    "take_over_push_to_hub",
    "verify_remote_code",
    "write_training_record",
]
