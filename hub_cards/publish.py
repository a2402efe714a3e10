# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Push a `gcl-train` output directory to the Hugging Face Hub: model (or LoRA adapter), processor, remote code and
model card, in one commit.

The push never writes to the output directory: it prepares the repository's files in a temporary export directory
(`prepare_export_dir`) and uploads that. A missing token is reported before anything is prepared, and a failed
upload (no network, no permission) raises `HubPublishError` with the output directory intact.
"""

import os
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import validate_repo_id

from .export import prepare_export_dir
from .run_record import read_run


class HubPublishError(RuntimeError):
    """A push to the Hub could not be made; the local output is unchanged."""


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise HubPublishError(
            "No Hugging Face token: pass --token (token=...), set HF_TOKEN, or log in with `hf auth login`. "
            "Nothing was pushed and the output directory is unchanged."
        )
    return token


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    lora: str | None = None,
    commit_message: str | None = None,
    **export_options,
) -> str:
    r"""
    Push a `gcl-train` output directory to the Hub repository `repo_id` (created if absent).

    Args:
        output_dir: the run's directory (model, processor, `retrieval_holdout.json`, `gcl_training.json`, `adapter/`).
        repo_id: `org/name`.
        token: a Hub token with write access; default: `HF_TOKEN` or the logged-in token.
        private: create the repository as private (`None`: the namespace's default; an existing repository keeps its
            visibility).
        lora: for LoRA runs, `"adapter"` or `"merged"` (default: the merged model when saved, else the adapter).
        commit_message: default `"Upload GCL model with gcl-hf"`.
        export_options: passed on to [`prepare_export_dir`] and the card (`base_model`, `datasets`, `license`,
            `eval_metrics`, `pipeline_tag`, `library_url`).

    Returns the URL of the commit.

    Raises:
        `HubPublishError`: no token, or the Hub could not be reached or refused the push. Nothing local is changed.
    """
    validate_repo_id(repo_id)
    if "/" not in repo_id:  # the card's usage code names the repository, so its namespace must be known
        raise ValueError(f"repo_id must be 'org/name' (or 'user/name'), got {repo_id!r}.")
    output_dir = Path(output_dir)
    read_run(output_dir)  # fail on a wrong directory before asking for a token
    token = _resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="gcl-push-") as staging:
        export = prepare_export_dir(output_dir, Path(staging) / "repo", repo_id, lora=lora, **export_options)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=str(export.path),
                commit_message=commit_message or "Upload GCL model with gcl-hf",
                delete_patterns=export.stale_files,
            )
        except Exception as error:  # noqa: BLE001  (any network or Hub failure: report it, the output is intact)
            raise HubPublishError(
                f"Could not push {output_dir} to https://huggingface.co/{repo_id}: {type(error).__name__}: {error}. "
                f"Nothing in {output_dir} was changed; run `gcl-push {output_dir} --repo_id {repo_id}` again once "
                "the Hub is reachable."
            ) from error
    return str(getattr(commit, "commit_url", commit))


def take_over_push_to_hub(training_args, lora: str | None = None, merge_lora: bool = True) -> str | None:
    r"""
    `gcl-train --push_to_hub`: check the request before training starts, and take the push from `Trainer`.

    `Trainer`'s own push would create the repository when training starts and upload checkpoints without the remote
    code and the card; `gcl-train` instead pushes the saved output once, with [`push_to_hub`], after training. So this
    turns `training_args.push_to_hub` off and returns the repository to push to (`None` without `--push_to_hub`).

    Args:
        training_args: the run's `GCLTrainingArguments` (`push_to_hub`, `hub_model_id`, `hub_token`, `use_lora`).
        lora: `--push_lora_as`: `"adapter"` or `"merged"` for LoRA runs; `None`: the merged model when one is saved.
        merge_lora: `--merge_lora`: whether the run will save a merged model.

    Raises:
        `ValueError`: no or a malformed `--hub_model_id`, or a LoRA choice the run cannot honour.
        `HubPublishError`: no token — raised now, so a long run does not end in a push that cannot happen.
    """
    if not training_args.push_to_hub:
        if lora is not None:
            raise ValueError("--push_lora_as is only used with --push_to_hub.")
        return None
    repo_id = training_args.hub_model_id
    if not repo_id or "/" not in repo_id:
        raise ValueError(f"--push_to_hub needs --hub_model_id org/name (got {repo_id!r}).")
    validate_repo_id(repo_id)
    if lora is not None and not getattr(training_args, "use_lora", False):
        raise ValueError("--push_lora_as applies to LoRA runs (--use_lora true) only.")
    if lora == "merged" and not merge_lora:
        raise ValueError("--push_lora_as merged needs --merge_lora true: without it the run saves no merged model.")
    _resolve_token(training_args.hub_token)
    training_args.push_to_hub = False
    return repo_id
