"""benchmarks/gpu_check.sh in its reduced (CPU) mode: it runs end to end and writes the JSON report it promises."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_reduced_mode_writes_a_complete_report(tmp_path):
    report_path = tmp_path / "reports" / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(report_path), "--reduced"],
                            capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"wrote {report_path}" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["mode"] == "reduced" and report["device"].startswith("cpu")
    assert {"date", "torch", "parity", "steps", "loss", "seconds"} <= set(report)
    parity = report["parity"]
    assert parity["passed"] is True and parity["failures"] == [] and parity["cases"] >= 40
    assert parity["max_error"]["float64"] <= 1e-10 and parity["max_error"]["float32"] <= 1e-5
    assert [row["N"] for row in report["steps"]] == [16, 32]
    for row in report["steps"]:
        assert row["gcl_seconds"] > 0 and row["clip_seconds"] > 0 and row["gcl_peak_MiB"] >= 0
    for row in report["loss"]:
        for mode in ("tiled", "full", "autograd"):
            assert row[f"{mode}_seconds"] > 0
        # the three implementations compute the same loss
        assert row["tiled_loss"] == pytest.approx(row["full_loss"], rel=1e-5)
        assert row["autograd_loss"] == pytest.approx(row["full_loss"], rel=1e-5)
    assert not list(report_path.parent.glob(".*tmp*"))  # written atomically, no leftover
