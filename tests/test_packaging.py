"""The built wheel carries every data file the library reads at run time (an editable install hides omissions)."""

import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO_ROOT


def test_wheel_contains_the_runtime_data_files(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in the environment")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path)], capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "hub_cards/templates/model_card.md",
        "hub_cards/templates/citation.bib",
        "trainer/evaluation/metric_module/gcl_retrieval/gcl_retrieval.py",
        "trainer/resources/openclipart_sample/metadata.jsonl",
        "trainer/resources/tiny_clip/config.json",
        "trainer/resources/tiny_clip/tokenizer.json",
        "trainer/resources/tiny_clip/preprocessor_config.json",
    }
    expected |= {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "modeling_gcl").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    images = [n for n in names if n.startswith("trainer/resources/openclipart_sample/images/")]
    assert len(images) == len(list((REPO_ROOT / "trainer/resources/openclipart_sample/images").glob("*.jpg"))) == 320
    assert not any(n.startswith("tests/") for n in names)


def test_build_and_twine_check_pass(tmp_path):
    """`python -m build` makes an sdist and a wheel whose metadata `twine check` accepts, at the one version."""
    pytest.importorskip("build", reason="needs the `build` package (dev extra)")
    pytest.importorskip("twine", reason="needs `twine` (dev extra)")
    from trainer.version import __version__

    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-o", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == [f"gcl_hf-{__version__}-py3-none-any.whl", f"gcl_hf-{__version__}.tar.gz"], built
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, tmp_path.iterdir())],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout
