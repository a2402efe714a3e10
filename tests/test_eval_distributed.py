"""`gcl-eval` split across 2 processes (torchrun, gloo on CPU) gives exactly the metrics of 1 process, on every suite
(matrix, M-BEIR, MMEB, CoVR), and only rank 0 writes. Run as a script, this file is the torchrun worker."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# gloo connects through the interface the host name resolves to; in a sandbox that can be unreachable. Loopback is
# always there (see test_distributed.py).
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}


def suite_arguments(model_dir: str, output_root: str) -> dict[str, list[str]]:
    """The four gcl-eval runs; a batch size of 3 splits every item list into batches shared unevenly by the ranks."""
    common = ["--model", model_dir, "--no_progress", "--device", "cpu", "--batch_size", "3"]
    return {
        "matrix": [*common, "--suite", "matrix", "--max_samples", "20", "--output_dir", f"{output_root}/matrix"],
        "mbeir": [*common, "--suite", "mbeir", "--data", str(FIXTURES / "mbeir"), "--instruction_index", "0",
                  "--output_dir", f"{output_root}/mbeir"],
        "mmeb": [*common, "--suite", "mmeb", "--data", str(FIXTURES / "mmeb"), "--output_dir", f"{output_root}/mmeb"],
        "covr": [*common, "--suite", "covr", "--data", str(FIXTURES / "covr" / "webvid8m-covr_test.csv"),
                 "--output_dir", f"{output_root}/covr"],
    }


def _worker(model_dir: str, output_root: str) -> None:
    """Under torchrun: one process group for all four suites (gloo cannot re-join a torchrun store once left)."""
    import faulthandler

    import torch
    import torch.distributed as dist

    faulthandler.dump_traceback_later(200, exit=True)  # a hang prints every stack instead of stalling the test
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from trainer.eval_cli import run

    returned = {suite: run(argv) is not None for suite, argv in suite_arguments(model_dir, output_root).items()}
    Path(output_root, f"rank{dist.get_rank()}.json").write_text(json.dumps(returned))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)  # spawned interpreters sometimes hang on shutdown after the work is done (test_distributed.py)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from modeling_gcl import GCLModel, GCLProcessor
    from trainer.data import BUNDLED_TINY_CLIP_DIR

    from .conftest import make_small_clip

    folder = tmp_path_factory.mktemp("model") / "gcl"
    GCLModel.from_backbone(make_small_clip(seed=4)).save_pretrained(folder)
    processor = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    processor.image_processor.size = {"shortest_edge": 32}
    processor.image_processor.crop_size = {"height": 32, "width": 32}
    processor.save_pretrained(folder)
    return str(folder)


def test_two_process_gcl_eval_equals_one_process_on_every_suite(saved_model, tmp_path):
    import torch

    from trainer.eval_cli import run

    two = tmp_path / "two"
    two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), **LOOPBACK_ENV}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), __file__, saved_model, str(two)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0 returned (and wrote) every suite's results; rank 1 only encoded.
    assert json.loads((two / "rank0.json").read_text()) == dict.fromkeys(("matrix", "mbeir", "mmeb", "covr"), True)
    assert json.loads((two / "rank1.json").read_text()) == dict.fromkeys(("matrix", "mbeir", "mmeb", "covr"), False)
    assert result.stdout.count("gcl-eval: wrote") == 4  # one report per suite, printed once

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same kernels, the same bits
    try:
        one = {suite: run(argv) for suite, argv in suite_arguments(saved_model, str(tmp_path / "one")).items()}
    finally:
        torch.set_num_threads(threads)
    for suite, expected in one.items():
        written = json.loads((two / suite / "metrics.json").read_text())
        assert written["processes"] == 2 and expected["processes"] == 1
        for key in ("results", "summary", "average", "modality_gap", "num_pairs", "num_queries", "ties"):
            if key in expected:
                assert written[key] == json.loads(json.dumps(expected[key])), (suite, key)
        assert (two / suite / "report.md").is_file()
    assert (two / "mbeir" / "runs" / "global" / "webqa_task2.trec").read_text() == (
        tmp_path / "one" / "mbeir" / "runs" / "global" / "webqa_task2.trec").read_text()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
