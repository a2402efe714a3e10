"""gcl-train's answers to ordinary mistakes: one line `gcl-train: ...`, a non-zero exit status, never a traceback; and
the `trainer` import-name clash reported by name."""

import os
import subprocess
import sys
import time

import pytest

from .conftest import REPO_ROOT


def _gcl_train(*args, env=None, timeout=240):
    command = [sys.executable, "-m", "trainer.cli", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def _assert_one_line_error(result, expected: str):
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gcl-train: "), result.stderr[-2000:]
    assert expected in last, last


def test_a_missing_model_directory_is_one_line(tmp_path):
    result, _ = _gcl_train("--model_name_or_path", "./no-such-model", "--output_dir", str(tmp_path / "out"))
    _assert_one_line_error(result, "gcl-train: ./no-such-model: no such model directory")
    assert "Repo id must use" not in result.stderr


def test_a_hub_id_offline_says_so_at_once(tmp_path):
    """HF_HUB_OFFLINE=1 and not cached: says so and names the variable. Without HF_HUB_OFFLINE and no reachable Hub
    (an endpoint on a closed local port): says so at once, mentions HF_HUB_OFFLINE, and never retries."""
    result, _ = _gcl_train("--model_name_or_path", "openai/clip-vit-nonexistent-test", "--output_dir", str(tmp_path))
    _assert_one_line_error(result, "HF_HUB_OFFLINE")
    result, _ = _gcl_train("--model_name_or_path", "openai/clip-vit-nonexistent-test", "--output_dir", str(tmp_path),
                           env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"})
    _assert_one_line_error(result, "cannot be reached")
    assert "HF_HUB_OFFLINE" in result.stderr and "Retry" not in result.stderr


def _main_error(*args) -> str:
    """Run gcl-train's entry point in this process (cheaper than a subprocess for the cases that stop before
    training); return the message it exits with."""
    from trainer.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    message = str(stopped.value.code)
    assert message.startswith("gcl-train: ") and "\n" not in message, message
    return message


def test_a_folder_without_config_is_not_a_model_directory(tmp_path):
    (tmp_path / "weights").mkdir()
    message = _main_error("--model_name_or_path", str(tmp_path / "weights"), "--output_dir", str(tmp_path / "out"))
    assert message.endswith("weights: not a model directory (it has no config.json)")


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    message = _main_error("--model_name_or_path", "tiny-clip", "--output_dir", str(tmp_path / "fresh"),
                          "--resume_from_checkpoint", "true")
    assert "holds no checkpoint-N to resume from" in message
    message = _main_error("--model_name_or_path", "tiny-clip", "--output_dir", str(tmp_path / "fresh"),
                          "--resume_from_checkpoint", str(tmp_path / "nowhere"))
    assert "nowhere: no such checkpoint folder" in message


@pytest.mark.parametrize("flags, expected", [
    (["--max_grad_norm", "nan"], "--max_grad_norm nan would silently turn gradient clipping off"),
    (["--fp16", "true", "--use_cpu", "true"], "--fp16 needs a CUDA GPU"),
])
def test_values_that_would_silently_do_something_else_are_refused(tmp_path, flags, expected):
    assert expected in _main_error("--model_name_or_path", "tiny-clip", "--output_dir", str(tmp_path), *flags)


def test_a_misspelt_flag_names_the_nearest_one(tmp_path):
    result, _ = _gcl_train("--learning_rat", "0.1", "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unrecognized arguments: --learning_rat 0.1 (did you mean --learning_rate?)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # no 170-argument usage dump


def test_suggestions_prefer_the_underscore_spelling():
    from trainer.cli_help import suggest_option, unknown_arguments_message

    known = ["--max_steps", "--max-steps", "--learning_rate", "--learning-rate", "--loss"]
    assert suggest_option("--max-step", known) == "--max_steps"
    assert suggest_option("--learnin_rate=3", known) == "--learning_rate"
    assert suggest_option("--zzzz", known) is None
    assert unknown_arguments_message(["--zzzz"], known) == "unrecognized arguments: --zzzz"


def _fake_trainer_distribution(site):
    """What `pip install trainer` (coqui-ai's) leaves in site-packages, minus the code."""
    info = site / "trainer-0.0.36.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trainer\nVersion: 0.0.36\n")
    (info / "top_level.txt").write_text("trainer\n")
    (info / "RECORD").write_text("trainer/__init__.py,,\n")


def test_another_distribution_providing_trainer_is_named(tmp_path, monkeypatch):
    from trainer import TrainerNameClashError, check_trainer_name_clash, other_trainer_distributions

    assert other_trainer_distributions() == []  # gcl-hf itself does not count
    _fake_trainer_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert other_trainer_distributions() == ["trainer 0.0.36"]
    with pytest.raises(TrainerNameClashError, match=r"trainer 0\.0\.36.*TTS"):
        check_trainer_name_clash()


def test_gcl_train_reports_the_trainer_clash_in_one_line(tmp_path):
    _fake_trainer_distribution(tmp_path / "site")
    result, _ = _gcl_train("--help", env={"PYTHONPATH": str(tmp_path / "site")})
    _assert_one_line_error(result, "also provides the top-level package `trainer`: trainer 0.0.36")


def test_gcl_eval_names_the_nearest_flag_too(capsys):
    from trainer.eval_cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--batch_sise", "3", "--output_dir", "out"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "unrecognized arguments: --batch_sise 3 (did you mean --batch_size?)" in error
    assert len(error.strip().splitlines()) == 1


def test_an_image_folder_without_metadata_is_one_line(tmp_path):
    import PIL.Image

    (tmp_path / "pictures").mkdir()
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "pictures" / "a.png")
    message = _main_error("--model_name_or_path", "tiny-clip", "--train_data", str(tmp_path / "pictures"),
                          "--output_dir", str(tmp_path / "out"))
    assert "pictures: no metadata.jsonl" in message


def test_gcl_eval_reports_the_trainer_clash_too(tmp_path, monkeypatch, capsys):
    from trainer.eval_cli import main

    _fake_trainer_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(SystemExit) as stopped:
        main(["--output_dir", str(tmp_path / "eval")])
    assert stopped.value.code == 1
    assert "gcl-eval: another installed distribution also provides the top-level package `trainer`: trainer 0.0.36" \
        in capsys.readouterr().err
