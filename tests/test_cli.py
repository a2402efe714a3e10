"""`gcl-train`: argument parsing (flags, YAML, JSON), the bundled default job, LoRA outputs, loading the result."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from modeling_gcl import GCLModel, GCLProcessor
from trainer.cli import FROM_SCRATCH_DEFAULTS, parse_arguments, run
from trainer.data import GCLCollator
from trainer.data import load_image_caption_dataset

FAST = ["--max_steps", "3", "--per_device_train_batch_size", "16", "--eval_holdout", "16", "--save_strategy", "no",
        "--disable_tqdm", "true", "--report_to", "none"]


def test_parse_yaml_and_json_config_files_with_flag_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model_name_or_path: openai/clip-vit-base-patch32\nfusion: normalized_sum\nloss: clip\n"
        "loss_pairs: [i2t, t2i]\nuse_lora: true\nlearning_rate: 0.0001\nmax_steps: 50\n"
    )
    model_args, data_args, args, explicit = parse_arguments([str(tmp_path / "run.yaml"), "--max_steps", "7"])
    assert model_args.model_name_or_path == "openai/clip-vit-base-patch32"
    assert model_args.fusion == "normalized_sum"
    assert args.loss == "clip" and args.loss_pairs == ["i2t", "t2i"] and args.use_lora is True
    assert args.learning_rate == 1e-4 and args.max_steps == 7
    assert {"learning_rate", "max_steps", "fusion"} <= explicit
    (tmp_path / "run.json").write_text(json.dumps({"train_data": "x.jsonl", "caption_column": "text", "seed": 3}))
    _, data_args, args, _ = parse_arguments([str(tmp_path / "run.json")])
    assert data_args.train_data == "x.jsonl" and data_args.caption_column == "text" and args.seed == 3
    assert args.remove_unused_columns is False and args.output_dir == "gcl-output"


def test_unknown_config_key_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: unknown argument\(s\) \['learning_rat'\]"):
        parse_arguments([str(tmp_path / "bad.yaml")])
    with pytest.raises(SystemExit):  # no abbreviations on the command line either
        parse_arguments(["--learning_rat", "0.1"])


def test_default_job_trains_the_bundled_model_and_saves_an_auto_loadable_model(tmp_path, capsys):
    out = tmp_path / "run"
    results = run(FAST + ["--output_dir", str(out), "--learning_rate", "0.001"])
    printed = capsys.readouterr().out
    assert "RANDOM initialisation" in printed
    assert "Held-out retrieval before training" in printed and "Held-out retrieval after training" in printed
    # from-scratch defaults fill only what the user did not set
    assert results["train"]["train_loss"] > 0
    state = json.loads((out / "retrieval_holdout.json").read_text())
    assert set(state["after"]) == {"t2i", "i2t", "t2it", "i2it", "it2t", "it2i"}
    assert state["fusion"] == "sum" and state["loss"] == "gcl"

    model = GCLModel.from_pretrained(out).eval()  # either layout (a CLIP backbone saves as a native CLIP checkpoint)
    processor = GCLProcessor.from_pretrained(out)
    assert isinstance(model, GCLModel) and isinstance(processor, GCLProcessor)
    assert (out / "model.safetensors").exists()
    holdout = load_image_caption_dataset().select(range(4))
    batch = GCLCollator(processor)([holdout[i] for i in range(4)])
    with torch.no_grad():
        first, second = model(**batch), GCLModel.from_pretrained(out).eval()(**batch)
    torch.testing.assert_close(first.fused_embeds, second.fused_embeds, atol=0, rtol=0)
    assert first.image_embeds.shape == (4, 128)
    # The saved model is the trained one: on the same held-out pairs it reproduces the "after" table that the run
    # computed from the model in memory.
    from trainer.data import split_holdout
    from trainer.evaluation import encode_pairs, modality_matrix

    _, heldout = split_holdout(load_image_caption_dataset(), 16, seed=42)
    reloaded = modality_matrix(encode_pairs(model, processor, heldout, show_progress=False))
    assert json.loads(json.dumps(reloaded)) == state["after"]


def test_from_scratch_defaults_respect_explicit_flags(tmp_path):
    _, _, args, explicit = parse_arguments(["--learning_rate", "0.01"])
    assert "learning_rate" in explicit and "max_steps" not in explicit
    assert FROM_SCRATCH_DEFAULTS["max_steps"] > 0


def test_lora_run_saves_adapter_and_merged_model(tmp_path):
    out = tmp_path / "lora"
    run(FAST + ["--output_dir", str(out), "--use_lora", "true", "--lora_r", "4", "--train_logit_scale", "true",
                "--fusion", "attention", "--eval_holdout", "0"])
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "gcl_extra_trainables.safetensors").exists()
    merged = GCLModel.from_pretrained(out)
    assert merged.config.fusion == "attention"
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_console_script_help():
    executable = shutil.which("gcl-train") or None
    command = [executable, "--help"] if executable else [sys.executable, "-m", "trainer.cli", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0
    for flag in ("--model_name_or_path", "--train_data", "--image_column", "--caption_column", "--loss", "--fusion",
                 "--use_lora", "--output_dir", "--max_steps", "--per_device_train_batch_size", "--learning_rate",
                 "--seed", "--skip_bad_samples", "--loss_pairs"):
        assert flag in result.stdout, flag
    # GCL's own arguments first, grouped by topic, then the common training ones; the rest behind --help-all.
    lines = result.stdout.splitlines()
    headers = [line[:-1] for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headers[:6] == ["data", "loss", "model", "scale (large batches, many GPUs, big data)", "LoRA", "publishing"]
    assert headers[6] == "training (common TrainingArguments)"
    assert len(lines) <= 130, len(lines)  # about two screens; --help-all is ~750 lines
    assert "--help-all" in lines[-1]
    assert "--lr_scheduler_type" not in result.stdout and "--train-data" not in result.stdout
    _assert_one_default_per_entry(result.stdout)


def _assert_one_default_per_entry(help_text: str):
    import re

    entries = re.split(r"\n  (?=-)", help_text)
    assert len(entries) > 40
    for entry in entries:  # argparse's "(default: X)" only where the text does not already name the default
        if "(default: " in entry:
            assert len(re.findall(r"\bdefault", entry, re.IGNORECASE)) == 1, entry


def test_help_all_lists_every_inherited_argument_with_one_default_each(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_arguments(["--help-all"])
    assert stopped.value.code == 0
    full = capsys.readouterr().out
    for flag in ("--lr_scheduler_type", "--gradient_accumulation_steps", "--ddp_backend", "--loss_pairs"):
        assert flag in full, flag
    _assert_one_default_per_entry(full)


def test_example_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "examples").glob("recipe_*.yaml"))
    assert recipes
    for recipe in recipes:
        # bf16 needs a GPU; this machine may have none, so the test overrides it (flags after the file win)
        model_args, data_args, args, _ = parse_arguments([str(recipe), "--bf16", "false"])
        assert model_args.model_name_or_path and args.loss in ("gcl", "clip")
