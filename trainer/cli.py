# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-train`: fine-tune a CLIP-family retriever with GCL on image–caption pairs.

    gcl-train                                  # offline demo: bundled tiny CLIP (random init) + bundled sample
    gcl-train --model_name_or_path openai/clip-vit-base-patch32 --train_data my_pairs.jsonl
    gcl-train recipe.yaml --max_steps 100      # a YAML/JSON file of the same arguments, flags override it
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser, set_seed

from modeling_gcl import FUSION_MODES

from .atomic import atomic_write_json, remove_stale_staging, staged_directory, staged_files
from .backbones import load_model_and_processor
from .data import GCLCollator
from .data import load_image_caption_dataset, split_holdout
from .evaluation import ModalityMatrixEvaluator, encode_pairs, format_matrix, modality_matrix
from .evaluation.callback import add_retrieval_evaluation
from .lora import merge_lora, save_lora_adapter
from .trainer import GCLTrainer, GCLTrainingArguments, apply_global_batch_size, check_finite_parameters

logger = logging.getLogger("gcl-train")

# The key of a recipe file (trainer/recipes/*.yaml) that describes it for `gcl-reproduce`; gcl-train skips it.
RECIPE_METADATA_KEY = "recipe"

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
            "checkpoint. Default: the bundled tiny CLIP, randomly initialised (no pretrained weights offline)."
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
            raise SystemExit(f"gcl-train: {path}: unknown argument(s) {unknown}; see gcl-train --help.")
    explicit = set(file_config) | {token[2:].split("=")[0] for token in argv if token.startswith("--")}
    # No abbreviations: a misspelt key in a config file must fail, not silently set a look-alike argument.
    parser = HfArgumentParser((ModelArguments, DataArguments, GCLTrainingArguments), allow_abbrev=False)
    model_args, data_args, training_args, unused = parser.parse_args_into_dataclasses(
        args=_to_argv(file_config) + argv, return_remaining_strings=True
    )
    if unused:
        parser.error(f"unrecognized arguments: {' '.join(unused)}")
    return model_args, data_args, training_args, explicit


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
    model_args, data_args, training_args, explicit = parse_arguments(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
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

    from_scratch = model_args.model_name_or_path is None
    if from_scratch:
        applied = {key: value for key, value in FROM_SCRATCH_DEFAULTS.items() if key not in explicit
                   and not (key == "per_device_train_batch_size" and training_args.global_batch_size is not None)}
        for key, value in applied.items():
            setattr(training_args, key, value)
        print(
            "gcl-train: no --model_name_or_path, so this trains the bundled tiny CLIP from RANDOM initialisation "
            "(pretrained weights cannot be fetched offline). Its numbers show the method runs, not CLIP-level "
            f"retrieval. From-scratch settings: {applied}",
            flush=True,
        )

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
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest complete checkpoint-N in output_dir
    train_result = trainer.train(resume_from_checkpoint=resume)
    results["train"] = train_result.metrics

    output_dir = training_args.output_dir
    # Saved through staging folders and renames (trainer/atomic.py): a crash mid-save never leaves a folder that
    # loads as a model mixing old and new files. Only the main process writes.
    check_finite_parameters(trainer.model, "the end of training")
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `gcl-train`."""
    run(argv)


if __name__ == "__main__":
    main()
