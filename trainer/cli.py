# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-train`: fine-tune a CLIP-family retriever with GCL on image–caption pairs.

    gcl-train                                  # offline: pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2 (LiT) + bundled sample
    gcl-train --model_name_or_path tiny-clip   # the bundled tiny CLIP from random initialisation (seconds)
    gcl-train --model_name_or_path openai/clip-vit-base-patch32 --train_data my_pairs.jsonl
    gcl-train recipe.yaml --max_steps 100      # a YAML/JSON file of the same arguments, flags override it
"""

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser, TrainingArguments, set_seed

from modeling_gcl import FUSION_MODES

from .atomic import (
    OutputDirInUseError, atomic_write_json, is_disk_full, output_dir_lock, remove_stale_staging, staged_directory,
    staged_files,
)
from . import TrainerNameClashError, check_trainer_name_clash
from .backbones import (DEFAULT_DUAL_ENCODER, TINY_CLIP, ModelLoadError, check_model_source,
                        load_model_and_processor, resolve_default_model)
from .cli_help import OneDefaultHelpFormatter, option_names, unknown_arguments_message
from .data import BadSampleError, DataError, GCLCollator
from .data import load_image_caption_dataset, split_holdout
from .evaluation import ModalityMatrixEvaluator, encode_pairs, format_matrix, modality_matrix
from .evaluation.callback import add_retrieval_evaluation
from .lora import merge_lora, save_lora_adapter
from .trainer import (
    TRAINER_STATE_FILE, CheckpointDiskFullError, GCLTrainer, GCLTrainingArguments, ResumeError, apply_global_batch_size,
    check_finite_parameters, resolve_resume_checkpoint,
)

logger = logging.getLogger("gcl-train")

# The key of a recipe file (trainer/recipes/*.yaml) that describes it for `gcl-reproduce`; gcl-train skips it.
RECIPE_METADATA_KEY = "recipe"

# Applied to the default model, the pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2 dual encoder, for every one of
# these arguments the user did not set. Locked image tower (LiT): the ImageNet features stay as they are (and its
# batch norms keep their statistics), the text tower and both new projections learn; this also makes a step about
# three times cheaper than training both towers, so the whole job fits about 5 minutes on 2 CPU cores. The
# projections start from random, hence a learning rate above usual fine-tuning.
PRETRAINED_TOWERS_DEFAULTS = {
    "learning_rate": 2e-4,
    "max_steps": 30,
    "warmup_steps": 3,
    "weight_decay": 0.1,
    "per_device_train_batch_size": 64,
    "freeze_towers": ["vision"],
    # The text tower is most of a step's cost and a batch pads to its longest caption: 32 tokens keep the whole of
    # ~90% of the bundled captions (median 14) and cost half of padding to the longest (~55).
    "max_caption_length": 32,
}

# Applied when training the bundled tiny CLIP from random initialisation, for every one of these arguments the user
# did not set: a randomly initialised model needs a larger learning rate and more steps than fine-tuning does.
FROM_SCRATCH_DEFAULTS = {
    "learning_rate": 5e-4,
    "max_steps": 300,
    "warmup_steps": 30,
    "weight_decay": 0.1,
    "per_device_train_batch_size": 64,
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A CLIP-family model (Hub id such as openai/clip-vit-base-patch32 or a directory) or a GCL "
            "checkpoint; 'tiny-clip' for the bundled tiny CLIP (random init). Default: "
            "efficientnet-lite0+all-MiniLM-L6-v2, a dual encoder of two pretrained towers from pip packages (the "
            "tiny CLIP if they are not installed; $GCL_TRAIN_DEFAULT_MODEL overrides)."
        },
    )
    fusion: str | None = field(
        default=None, metadata={"help": "Fused-modality pooling (default sum = CLIP-SF).", "choices": list(FUSION_MODES)}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Fixed temperature tau; default: the backbone's learnable logit scale."}
    )
    learnable_temperature: bool | None = field(default=None, metadata={"help": "Train the logit scale (default yes)."})
    merge_lora: bool = field(
        default=True, metadata={"help": "With --use_lora: also save the merged model in output_dir (adapter in output_dir/adapter)."}
    )
    push_lora_as: str | None = field(
        default=None,
        metadata={"help": "With --use_lora --push_to_hub: push the LoRA 'adapter' or the 'merged' model (default: merged "
                          "when --merge_lora, else the adapter).", "choices": ["adapter", "merged"]},
    )


@dataclass
class DataArguments:
    train_data: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset name, an imagefolder directory (metadata.jsonl with file_name and caption), or a "
            "JSONL file of image path + caption. Default: the bundled 320-pair openclipart sample."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    data_format: str = field(
        default="auto",
        metadata={"help": "How to read --train_data: auto (by its shape), pairs (imagefolder / JSONL / Hub pairs), or "
                          "lcs558k (LLaVA-Pretrain's blip_laion_cc_sbu_558k.json: image + conversations).",
                  "choices": ["auto", "pairs", "lcs558k"]},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths are read from (default: the data file's folder; for "
                          "LCS-558K from the Hub, the extracted images.zip)."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str = field(default="image", metadata={"help": "Column holding images (PIL, path or bytes)."})
    caption_column: str = field(default="caption", metadata={"help": "Column holding captions."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    eval_holdout: int = field(
        default=64,
        metadata={"help": "Pairs held out to report retrieval hit@k before and after training (0: none)."},
    )
    max_caption_length: int | None = field(default=None, metadata={"help": "Truncate captions to this many tokens."})
    retrieval_eval_steps: int = field(
        default=0,
        metadata={"help": "Every N steps (and at the end), evaluate the modality matrix on the held-out pairs and log "
                  "it as eval_matrix/{cell}/{metric} (0: off; needs --eval_holdout)."},
    )
    max_image_pixels: int | None = field(
        default=None,
        metadata={"help": "Refuse (or with --skip_bad_samples skip) images of more pixels than this, checked before "
                  "decoding (decompression bombs). Default: Pillow's limit, about 89 million."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the data lazily as a stream (datasets.IterableDataset); needs --max_steps."},
    )


def _to_argv(config: dict) -> list[str]:
    """`{"max_steps": 5, "loss_pairs": ["i2t"]}` -> `["--max_steps", "5", "--loss_pairs", "i2t"]`."""
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def argument_names() -> set[str]:
    """Every argument gcl-train takes (the keys a config or recipe file may hold)."""
    return {f.name for cls in (ModelArguments, DataArguments, GCLTrainingArguments) for f in fields(cls)}


def parse_arguments(argv: list[str] | None = None):
    """Parse flags, optionally after a YAML/JSON config file given as the first argument.

    Returns `(model_args, data_args, training_args, explicit)` where `explicit` names the arguments the user set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    file_config = {}
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = argv.pop(0)
        with open(path, encoding="utf-8") as handle:
            file_config = yaml.safe_load(handle) if not path.endswith(".json") else json.load(handle)
        if not isinstance(file_config, dict):
            raise SystemExit(f"gcl-train: {path} must hold a mapping of argument names to values.")
        file_config.pop(RECIPE_METADATA_KEY, None)  # a recipe's description (gcl-reproduce reads it), not arguments
        unknown = sorted(set(file_config) - argument_names())
        if unknown:
            hint = unknown_arguments_message([f"--{key}" for key in unknown], [f"--{name}" for name in argument_names()])
            hint = hint.split(" (did you mean ", 1)[1][:-1] if " (did you mean " in hint else ""
            hint = f" (did you mean {hint.replace('--', '')})" if hint else ""
            raise SystemExit(f"gcl-train: {path}: unknown argument(s) {unknown}{hint}; see gcl-train --help.")
    explicit = set(file_config) | {token[2:].split("=")[0] for token in argv if token.startswith("--")}
    parser = build_parser()
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(short_help(parser))
        raise SystemExit(0)
    bf16_on_cpu = False
    if _truthy_flag(argv, "bf16", file_config) and not _truthy_flag(argv, "use_cpu", file_config) and not _has_accelerator():
        # TrainingArguments refuses bf16 without a bf16 GPU unless told to use the CPU, where it is a real bfloat16
        # autocast: say so and run it there.
        argv = argv + ["--use_cpu", "true"]
        bf16_on_cpu = True
    try:
        model_args, data_args, training_args, unused = parser.parse_args_into_dataclasses(
            args=_to_argv(file_config) + argv, return_remaining_strings=True
        )
    except ValueError as error:  # TrainingArguments' own checks of the values
        raise SystemExit(f"gcl-train: {error}") from error
    if unused:
        parser.error(unknown_arguments_message(unused, option_names(parser)))
    if bf16_on_cpu:
        print("gcl-train: --bf16 without a GPU: training in bfloat16 autocast on the CPU (--use_cpu true).", flush=True)
    return model_args, data_args, training_args, explicit


def _truthy_flag(argv: list[str], name: str, file_config: dict) -> bool:
    """Whether `--name` is switched on by the flags (the last one wins) or, failing that, the config file."""
    value = file_config.get(name, False)
    for position, token in enumerate(argv):
        if token == f"--{name}":
            following = argv[position + 1] if position + 1 < len(argv) else ""
            value = True if following.startswith("--") or not following else following
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return str(value).lower() in ("true", "1", "yes", "y")


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


# gcl-train --help: GCL's own arguments by topic, then the TrainingArguments most runs set; --help-all has the rest.
HELP_GROUPS = {
    "data": ["train_data", "data_format", "dataset_config_name", "dataset_split", "image_column", "caption_column",
             "image_root", "max_train_samples", "max_caption_length", "max_image_pixels", "skip_bad_samples",
             "eval_holdout", "retrieval_eval_steps", "batch_unique_column"],
    "loss": ["loss", "loss_pairs", "loss_weights", "exclude_other_positive", "loss_modalities", "sigmoid_bias_init"],
    "model": ["model_name_or_path", "fusion", "temperature", "learnable_temperature", "freeze_towers"],
    "scale (large batches, many GPUs, big data)": [
        "global_batch_size", "per_device_train_batch_size", "gather_across_devices", "mini_batch_size",
        "loss_tile_size", "streaming"],
    "LoRA": ["use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_frozen_towers",
             "train_logit_scale", "merge_lora"],
    "publishing": ["push_to_hub", "hub_model_id", "hub_private_repo", "push_lora_as"],
    "training (common TrainingArguments)": [
        "output_dir", "max_steps", "num_train_epochs", "learning_rate", "warmup_steps", "weight_decay",
        "max_grad_norm", "save_steps", "save_total_limit", "resume_from_checkpoint", "logging_steps", "seed", "bf16",
        "fp16", "report_to"],
}


# Shorter words for the inherited arguments in the short help (--help-all keeps transformers' full text).
SHORT_HELP_TEXT = {
    "output_dir": "Where the model, checkpoints and run records go.",
    "max_steps": "Training steps; overrides --num_train_epochs (needed with --streaming).",
    "num_train_epochs": "Passes over the data when --max_steps is not set.",
    "learning_rate": "Peak learning rate (AdamW).",
    "warmup_steps": "Linear warmup steps (or a ratio of the run if < 1).",
    "weight_decay": "AdamW weight decay.",
    "max_grad_norm": "Clip gradients to this norm (0: no clipping).",
    "save_steps": "Write checkpoint-N every N steps (for --resume_from_checkpoint).",
    "save_total_limit": "Keep at most this many checkpoints.",
    "resume_from_checkpoint": "true: continue from the newest checkpoint-N in --output_dir; or a checkpoint folder.",
    "seed": "Random seed (model init, data order).",
    "bf16": "bfloat16 mixed precision (GPU, or CPU autocast without one).",
    "fp16": "float16 mixed precision (needs a CUDA GPU).",
    "report_to": "Loggers: none, tensorboard, wandb, all, ...",
    "push_to_hub": "Publish the trained model (with remote code and a model card) at the end.",
    "hub_model_id": "The Hub repository to publish to (user/name).",
    "hub_private_repo": "Create the repository private.",
}


def _short_metavar(action) -> str | None:
    if action.choices:
        return None  # argparse shows {a,b,c}
    kind = getattr(action.type, "__name__", "")
    metavar = "BOOL" if "bool" in kind else {"int": "N", "float": "X"}.get(kind, "VALUE")
    return metavar


class _TrainArgumentParser(HfArgumentParser):
    def error(self, message):
        # No usage line: gcl-train's would list ~170 inherited arguments before the one line that matters.
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> HfArgumentParser:
    # No abbreviations: a misspelt key in a config file must fail, not silently set a look-alike argument.
    return _TrainArgumentParser((ModelArguments, DataArguments, GCLTrainingArguments), allow_abbrev=False,
                                prog="gcl-train", formatter_class=OneDefaultHelpFormatter)


def short_help(parser: HfArgumentParser) -> str:
    """GCL's own arguments grouped by topic, and the common training ones; every other argument (all of
    `TrainingArguments`) is in `--help-all`."""
    import argparse

    short = argparse.ArgumentParser(
        prog="gcl-train", usage="gcl-train [CONFIG.yaml] [--ARGUMENT VALUE ...]", add_help=False,
        description=__doc__.split("\n\n", 1)[1].rstrip(), formatter_class=_ShortHelpFormatter,
        epilog="Every other argument gcl-train takes (precision, logging, evaluation, DDP, Hub, ... inherited from "
               "transformers.TrainingArguments): gcl-train --help-all",
    )
    by_dest = {}
    for action in parser._actions:  # the first of a dest: `--merge_lora`, not its `--no_merge_lora`
        by_dest.setdefault(action.dest, action)
    own = [f.name for cls in (ModelArguments, DataArguments) for f in fields(cls)]
    own += [f.name for f in fields(GCLTrainingArguments) if f.name not in {g.name for g in fields(TrainingArguments)}]
    grouped = {name for names in HELP_GROUPS.values() for name in names}
    groups = dict(HELP_GROUPS)
    leftovers = [name for name in own if name not in grouped]  # a new GCL argument nobody has placed yet
    if leftovers:
        groups["other GCL arguments"] = leftovers
    for title, names in groups.items():
        group = short.add_argument_group(title)
        for name in names:
            if name not in by_dest:
                continue
            action = copy.copy(by_dest[name])  # shown once, under its underscore spelling, with a short metavar
            action.option_strings = action.option_strings[:1]
            action.metavar = _short_metavar(action)
            action.help = SHORT_HELP_TEXT.get(name, action.help)
            group._add_action(action)
    return short.format_help().rstrip()


class _ShortHelpFormatter(OneDefaultHelpFormatter):
    """The one-default formatter, 110 columns wide whatever the terminal, keeping the description's layout (it holds
    example commands)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=110)

    def _get_help_string(self, action):
        if action.default is False:  # a switch that is off unless given says nothing more
            return action.help or ""
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _report_retrieval(model, processor, holdout, data_args, training_args, title):
    embeds = encode_pairs(
        model, processor, holdout, data_args.image_column, data_args.caption_column,
        batch_size=training_args.per_device_eval_batch_size * 8,
        show_progress=not training_args.disable_tqdm,
    )
    results = modality_matrix(embeds)
    print(format_matrix(results, title), flush=True)
    return results


def run(argv: list[str] | None = None) -> dict:
    """Run `gcl-train` with `argv` (default `sys.argv[1:]`); returns the held-out retrieval results and the training
    metrics."""
    with contextlib.ExitStack() as held:  # the output folder's run lock, once taken
        return _run(argv, held)


def _check_numbers(training_args) -> None:
    """Arguments whose value would silently do something else than asked."""
    if math.isnan(training_args.max_grad_norm):
        raise SystemExit("gcl-train: --max_grad_norm nan would silently turn gradient clipping off; give a positive "
                         "norm, or 0 for no clipping.")
    if training_args.fp16 and (training_args.use_cpu or training_args.device.type == "cpu"):
        raise SystemExit("gcl-train: --fp16 needs a CUDA GPU and this run is on the CPU, where it would silently train "
                         "in float32; use --bf16 true (bfloat16 autocast works on the CPU) or leave --fp16 off.")


def _clamp_warmup(training_args, explicit: set[str]) -> None:
    """A warmup longer than the run (the from-scratch default of 30 steps with --max_steps 10) never reaches the
    learning rate asked for: keep the from-scratch ratio, a tenth of the run, and say so."""
    max_steps, warmup = training_args.max_steps, training_args.warmup_steps
    if "warmup_steps" in explicit or max_steps <= 0 or not warmup >= 1 or warmup <= max_steps // 10:
        return
    training_args.warmup_steps = max_steps // 10
    print(f"gcl-train: warmup_steps {warmup} is longer than a tenth of --max_steps {max_steps}; using "
          f"{training_args.warmup_steps} (pass --warmup_steps to choose).", flush=True)


def _finished_run(output_dir: str, checkpoint: str | None, training_args) -> int | None:
    """The last step of a run that `output_dir` holds complete (final model saved and records written, last), if
    resuming it would train nothing; else `None`."""
    from hub_cards.run_record import TRAINING_RECORD_FILE

    has_model = any(os.path.isfile(os.path.join(output_dir, name)) for name in ("config.json", "adapter/adapter_config.json"))
    if not (has_model and os.path.isfile(os.path.join(output_dir, TRAINING_RECORD_FILE))):
        return None
    if checkpoint is None:
        return -1
    with open(os.path.join(checkpoint, TRAINER_STATE_FILE), encoding="utf-8") as handle:
        state = json.load(handle)
    planned = training_args.max_steps if training_args.max_steps > 0 else state.get("max_steps")
    if training_args.max_steps <= 0 and state.get("num_train_epochs") != training_args.num_train_epochs:
        return None
    step = state.get("global_step")
    return step if step is not None and step == planned else None


def _drop_duplicate_last_checkpoint(output_dir: str, global_step: int, explicit: set[str]) -> None:
    """Trainer writes a checkpoint at the last step whatever --save_steps says; once the final model is saved it is a
    copy of it plus optimizer state (97 MB for the main job). Keep it only when checkpoints were asked for."""
    if explicit & {"save_steps", "save_strategy"}:
        return
    last = os.path.join(output_dir, f"checkpoint-{global_step}")
    if os.path.isfile(os.path.join(last, TRAINER_STATE_FILE)):
        shutil.rmtree(last)
        print(f"gcl-train: removed {last} (the final model again, with optimizer state; pass --save_steps N to keep "
              "checkpoints).", flush=True)


def _run(argv: list[str] | None, held: contextlib.ExitStack) -> dict:
    model_args, data_args, training_args, explicit = parse_arguments(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    _check_numbers(training_args)
    set_seed(training_args.seed)
    try:
        apply_global_batch_size(training_args, per_device_given="per_device_train_batch_size" in explicit)
    except ValueError as error:
        raise SystemExit(f"gcl-train: {error}") from error
    if training_args.global_batch_size is not None:
        print(f"gcl-train: global batch {training_args.global_batch_size} = {training_args.world_size} process(es) x "
              f"{training_args.per_device_train_batch_size} pairs.", flush=True)

    # --push_to_hub: checked now (repository id, token) and done by hub_cards after saving, with remote code and card.
    from hub_cards.publish import HubPublishError, take_over_push_to_hub

    try:
        hub_repo_id = take_over_push_to_hub(training_args, model_args.push_lora_as, model_args.merge_lora)
    except (HubPublishError, ValueError) as error:
        raise SystemExit(f"gcl-train: {error}") from error

    model_args.model_name_or_path, fallback_note = resolve_default_model(model_args.model_name_or_path)
    if fallback_note:
        print(fallback_note, flush=True)
    bundled_defaults = {TINY_CLIP: FROM_SCRATCH_DEFAULTS, DEFAULT_DUAL_ENCODER: PRETRAINED_TOWERS_DEFAULTS}
    if model_args.model_name_or_path in bundled_defaults:
        defaults = bundled_defaults[model_args.model_name_or_path]
        applied = {key: value for key, value in defaults.items() if key not in explicit
                   and not (key == "per_device_train_batch_size" and training_args.global_batch_size is not None)
                   and not (key == "freeze_towers" and training_args.use_lora)}
        for key, value in applied.items():
            setattr(data_args if hasattr(data_args, key) else training_args, key, value)
        if model_args.model_name_or_path == TINY_CLIP:
            print(
                "gcl-train: this trains the bundled tiny CLIP from RANDOM initialisation. Its numbers show the method "
                f"runs, not CLIP-level retrieval. From-scratch settings: {applied}",
                flush=True,
            )
        else:
            print(
                f"gcl-train: no --model_name_or_path, so this trains {DEFAULT_DUAL_ENCODER}: EfficientNet-Lite0 "
                "(ImageNet) and all-MiniLM-L6-v2, both pretrained, with new projections; the image tower is locked "
                f"(LiT). Settings: {applied}",
                flush=True,
            )

    _clamp_warmup(training_args, explicit)

    output_dir = training_args.output_dir
    if training_args.should_save:
        held.enter_context(output_dir_lock(output_dir))  # a second run into output_dir stops here
    resume_asked = str(training_args.resume_from_checkpoint or "false").lower() not in ("false", "no", "")
    try:
        resume = resolve_resume_checkpoint(output_dir, training_args.resume_from_checkpoint)
    except ResumeError:
        if not resume_asked or _finished_run(output_dir, None, training_args) is None:
            raise
        resume = None  # a finished run whose checkpoints were not kept
    if resume_asked:
        finished = _finished_run(output_dir, resume, training_args)
        if finished is not None:
            at = f"at step {finished}, " if finished >= 0 else ""
            print(f"gcl-train: {output_dir} already holds this finished run ({at}final model saved); nothing to do. "
                  "Raise --max_steps to train further, or rerun without --resume_from_checkpoint to start over.",
                  flush=True)
            return {"already_complete": True, "global_step": finished}
    if model_args.model_name_or_path not in (None, TINY_CLIP, DEFAULT_DUAL_ENCODER):
        check_model_source(model_args.model_name_or_path)  # a wrong path fails now, not after loading the data

    dataset = load_image_caption_dataset(
        data_args.train_data, data_args.image_column, data_args.caption_column,
        split=data_args.dataset_split, dataset_config_name=data_args.dataset_config_name,
        streaming=data_args.streaming, data_format=data_args.data_format, image_root=data_args.image_root,
        skip_bad_rows=training_args.skip_bad_samples,
    )
    if data_args.streaming and training_args.max_steps <= 0:
        raise SystemExit("gcl-train: --streaming needs --max_steps (a stream has no length).")
    train_set, holdout = split_holdout(
        dataset, data_args.eval_holdout, training_args.seed, data_args.image_column, data_args.caption_column,
        skip_bad_samples=training_args.skip_bad_samples, max_image_pixels=data_args.max_image_pixels,
    )
    if data_args.max_train_samples is not None:
        train_set = (
            train_set.take(data_args.max_train_samples) if data_args.streaming
            else train_set.select(range(min(data_args.max_train_samples, len(train_set))))
        )
    size = "a stream of" if data_args.streaming else len(train_set)
    print(f"gcl-train: {size} training pairs, {0 if holdout is None else len(holdout)} held out.", flush=True)

    model, processor = load_model_and_processor(
        model_args.model_name_or_path, fusion=model_args.fusion, temperature=model_args.temperature,
        learnable_temperature=model_args.learnable_temperature, seed=training_args.seed,
    )
    # Record in the saved config what the model was trained with.
    model.config.loss_pairs = list(training_args.loss_pairs)
    model.config.loss_weights = training_args.loss_weights
    model.config.exclude_other_positive = training_args.exclude_other_positive
    model.config.loss_modalities = list(training_args.loss_modalities)
    if training_args.loss == "gcl_sigmoid":  # GCLTrainer gives the model its logit bias
        if (not model.config.learnable_temperature and not training_args.use_lora
                and not explicit & {"learnable_temperature", "temperature"}):
            # SigLIP learns τ with b; a fixed τ (VISTA's 0.02) stays fixed only when asked for on the command line.
            model.set_learnable_temperature(True)
            print("gcl-train: --loss gcl_sigmoid learns the temperature with the bias (the model's fixed temperature "
                  "is its starting value; pass --learnable_temperature false to keep it fixed).", flush=True)

    results = {"fusion": model.config.fusion, "loss": training_args.loss}
    if holdout is not None:
        results["before"] = _report_retrieval(model, processor, holdout, data_args, training_args,
                                              f"Held-out retrieval before training ({len(holdout)} pairs, hit@k %):")

    collator = GCLCollator(
        processor, data_args.image_column, data_args.caption_column,
        max_length=data_args.max_caption_length, skip_bad_samples=training_args.skip_bad_samples,
        max_image_pixels=data_args.max_image_pixels,
    )
    if training_args.should_save and os.path.isdir(training_args.output_dir):
        for leftover in remove_stale_staging(training_args.output_dir):
            logger.warning("Removed %s, left by a save that was interrupted.", leftover)
    trainer = GCLTrainer(model=model, args=training_args, train_dataset=train_set, data_collator=collator,
                         processing_class=processor)
    if data_args.retrieval_eval_steps:
        if holdout is None:
            raise SystemExit("gcl-train: --retrieval_eval_steps needs held-out pairs (--eval_holdout N).")
        evaluator = ModalityMatrixEvaluator(holdout, data_args.image_column, data_args.caption_column,
                                            batch_size=training_args.per_device_eval_batch_size * 8, show_progress=False)
        add_retrieval_evaluation(trainer, evaluator, eval_steps=data_args.retrieval_eval_steps)
    train_result = trainer.train(resume_from_checkpoint=resume)  # at the last step already: loads it, trains nothing
    results["train"] = train_result.metrics

    # Saved through staging folders and renames (trainer/atomic.py): a crash mid-save never leaves a folder that
    # loads as a model mixing old and new files. Only the main process writes.
    check_finite_parameters(trainer.model, "the end of training")
    if training_args.should_save:
        from hub_cards.run_record import TRAINING_RECORD_FILE

        # The run record is written last: until it is back, output_dir does not count as a finished run (a crash in
        # the final save is redone by --resume_from_checkpoint true from the last checkpoint).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(output_dir, TRAINING_RECORD_FILE))
    if training_args.use_lora:
        if training_args.should_save:
            with staged_directory(os.path.join(output_dir, "adapter")) as staging:
                save_lora_adapter(trainer.model, str(staging))
                processor.save_pretrained(str(staging))
        trained = merge_lora(trainer.model) if model_args.merge_lora else None
    else:
        trained = trainer.model
    if trained is not None and training_args.should_save:
        with staged_files(output_dir) as staging:
            trained.save_pretrained(str(staging))
            processor.save_pretrained(str(staging))

    if holdout is not None:
        evaluated = trained if trained is not None else trainer.model
        results["after"] = _report_retrieval(evaluated, processor, holdout, data_args, training_args,
                                             f"Held-out retrieval after training ({len(holdout)} pairs, hit@k %):")
    if training_args.should_save:
        atomic_write_json(os.path.join(output_dir, "retrieval_holdout.json"), results)
        from hub_cards import write_training_record  # what a model card reports that the model files do not hold

        write_training_record(
            output_dir, training_args, base_model=model_args.model_name_or_path, dataset=data_args.train_data,
            train_pairs=None if data_args.streaming else len(train_set),
            holdout_pairs=0 if holdout is None else len(holdout),
        )
        _drop_duplicate_last_checkpoint(output_dir, trainer.state.global_step, explicit)
    print(f"gcl-train: saved to {output_dir}", flush=True)
    if hub_repo_id is not None and training_args.should_save:
        from hub_cards import push_to_hub

        try:
            url = push_to_hub(output_dir, hub_repo_id, token=training_args.hub_token,
                              private=training_args.hub_private_repo, lora=model_args.push_lora_as)
        except HubPublishError as error:  # the trained model is saved; only the upload is left to redo
            raise SystemExit(f"gcl-train: {error}") from error
        print(f"gcl-train: pushed to https://huggingface.co/{hub_repo_id} ({url})", flush=True)
    return results


# Ordinary mistakes and conditions: one line `gcl-train: message`, no traceback (GCL_TRACEBACK=1 shows it).
USER_ERRORS = (DataError, BadSampleError, ModelLoadError, ResumeError, OutputDirInUseError, CheckpointDiskFullError,
               FloatingPointError, TrainerNameClashError)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `gcl-train`: ordinary errors end in one line `gcl-train: ...` and exit status 1."""
    try:
        check_trainer_name_clash()
        run(argv)
    except KeyboardInterrupt:
        sys.exit("gcl-train: interrupted; rerun with --resume_from_checkpoint true to continue from the last "
                 "checkpoint.")
    except (*USER_ERRORS, ValueError, OSError) as error:
        if os.environ.get("GCL_TRACEBACK"):
            raise
        message = " ".join(str(error).split("\n", 1)[0].split()) if not isinstance(error, USER_ERRORS) else str(error)
        if is_disk_full(error) and not isinstance(error, CheckpointDiskFullError):
            message = f"disk full: {message}"
        if not isinstance(error, USER_ERRORS):
            message += " (GCL_TRACEBACK=1 shows where)"
        sys.exit(f"gcl-train: {message or type(error).__name__}")


if __name__ == "__main__":
    main()
