"""Retrieval search: blocked exact top-k (`trainer.evaluation.exact_top_k`) vs a bare `torch.topk(q @ C.T)`, and FAISS
`IndexFlatIP` when installed, over a large candidate pool. Prints time and peak extra memory of each, and the ratios.

Each method runs in a fresh process. The peak is the process's peak resident memory during the search above what it
held just before it (Linux `VmHWM`, reset through `/proc/self/clear_refs`); the embeddings are created before that.

    python benchmarks/eval_search.py [--num_candidates 100000] [--num_queries 2000] [--dim 512] [--k 50]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(method: str, num_queries: int, num_candidates: int, dim: int, k: int, repeats: int) -> dict:
    # search.py needs only torch (and faiss): load it alone, not the whole `trainer` package with transformers.
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "trainer" / "evaluation" / "search.py"
    spec = importlib.util.spec_from_file_location("gcl_search", path)
    search_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search_module)
    FaissIndex, exact_top_k = search_module.FaissIndex, search_module.exact_top_k

    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(num_queries, dim, generator=generator), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(num_candidates, dim, generator=generator), dim=1)
    if method == "bare":
        search = lambda: torch.topk(queries @ candidates.T, k, dim=1)  # noqa: E731
    elif method == "chunked":
        search = lambda: exact_top_k(queries, candidates, k)  # noqa: E731
    else:  # faiss: the index build counts, as the evaluators build one per pool
        search = lambda: FaissIndex(candidates).search(queries, k)  # noqa: E731
    expected = None
    times = []
    baseline = _read_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    for _ in range(repeats):
        start = time.perf_counter()
        scores, indices = search()
        times.append(time.perf_counter() - start)
        expected = indices[:, :5].tolist() if expected is None else expected
    peak = _read_status_kib("VmHWM")
    return {"method": method, "seconds": sorted(times)[len(times) // 2], "peak_extra_mib": (peak - baseline) / 1024,
            "top5_first_query": expected[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_candidates", type=int, default=100_000)
    parser.add_argument("--num_queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.num_queries, args.num_candidates, args.dim, args.k, args.repeats)
    if args._worker:
        print(json.dumps(measure(args._worker, *shape)))
        return
    try:
        import faiss  # noqa: F401

        methods = ["bare", "chunked", "faiss"]
    except ImportError:
        methods = ["bare", "chunked"]
    results = {}
    for method in methods:
        command = [sys.executable, __file__, "--_worker", method, *[f"--{name}={value}" for name, value in
                   zip(("num_queries", "num_candidates", "dim", "k", "repeats"), shape)]]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])
    full_mib = args.num_queries * args.num_candidates * 4 / 2**20
    print(f"{args.num_queries} queries x {args.num_candidates} candidates, dim {args.dim}, top-{args.k}, float32, "
          f"{torch.get_num_threads()} threads (the full score matrix is {full_mib:.0f} MiB)")
    print(f"{'method':<10}{'seconds':>10}{'peak extra MiB':>16}{'time / bare':>13}{'memory / bare':>15}")
    bare = results["bare"]
    for method, result in results.items():
        same = "" if result["top5_first_query"] == bare["top5_first_query"] else "  (top-5 differs!)"
        print(f"{method:<10}{result['seconds']:>10.3f}{result['peak_extra_mib']:>16.0f}"
              f"{result['seconds'] / bare['seconds']:>13.2f}{result['peak_extra_mib'] / bare['peak_extra_mib']:>15.2f}"
              + same)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
