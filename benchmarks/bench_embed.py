# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Sharded corpus embedding: `gcl-embed` in 1 process vs 2 processes (torchrun, gloo), pairs per second, side by side.

    python benchmarks/bench_embed.py [--pairs 320] [--modality fused] [--batch_size 32] [--shard_size 40]

The model is the bundled tiny CLIP (random init, saved once as a GCL checkpoint), the data the bundled 320-pair
sample (tiled with --repeat). Each configuration runs as a fresh command; the rate is the one gcl-embed reports for its
embedding phase (decoding + preprocessing + forward + shard writes, until every process is done; model loading and
start-up excluded), and the wall time of the whole command is shown beside it. 1 process is measured with 1 thread and
with as many threads as the 2-process run uses in total, so the comparison is at equal cores.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"rows embedded in this run in ([0-9.]+) s \(([0-9.]+) rows/s over (\d+) process")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_model(folder: Path) -> str:
    from modeling_gcl import GCLModel
    from trainer import load_bundled_tiny_clip

    clip, processor = load_bundled_tiny_clip(0)
    GCLModel.from_backbone(clip).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def tiled_data(folder: Path, repeat: int) -> str:
    """The bundled sample as JSONL pairs, `repeat` times (distinct ids per copy)."""
    import json

    from trainer.data import BUNDLED_SAMPLE_DIR, load_image_caption_dataset

    pairs = load_image_caption_dataset(BUNDLED_SAMPLE_DIR)
    path = folder / "pairs.jsonl"
    with path.open("w") as handle:
        for copy in range(repeat):
            for row in pairs:
                handle.write(json.dumps({"image": row["image"]["path"], "caption": row["caption"]}) + "\n")
    return str(path)


def run(processes: int, threads: int, model: str, data: str, output: Path, args) -> dict:
    embed = ["-m", "trainer.embed", model, "--data", data, "--output_dir", str(output), "--modality", args.modality,
             "--batch_size", str(args.batch_size), "--shard_size", str(args.shard_size), "--no_progress",
             "--device", "cpu"]
    if processes == 1:
        command = [sys.executable, *embed]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *embed]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench_embed: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    match = RATE.search(result.stdout)
    seconds, rate, reported = float(match[1]), float(match[2]), int(match[3])
    assert reported == processes
    return {"processes": processes, "threads": threads, "seconds": seconds, "rate": rate, "wall": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="Copies of the 320-pair sample.")
    parser.add_argument("--modality", default="fused", choices=["image", "text", "fused"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--shard_size", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = save_model(scratch / "model")
        data = tiled_data(scratch, args.repeat)
        rows = []
        for processes, threads in ((1, 1), (1, 2), (2, 1)):
            rows.append(run(processes, threads, model, data, scratch / f"out-{processes}-{threads}", args))
    one = next(row for row in rows if row["processes"] == 1 and row["threads"] == 1)
    same_cores = next(row for row in rows if row["processes"] == 1 and row["threads"] == 2)
    print(f"gcl-embed, {320 * args.repeat} pairs, modality {args.modality}, batch {args.batch_size}, shard "
          f"{args.shard_size}, bundled tiny CLIP, CPU ({os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f})")
    print("| processes × threads | embedding s | pairs/s | × 1 × 1 | × 1 × 2 (same cores) | whole command s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} × {row['threads']} | {row['seconds']:.1f} | {row['rate']:.1f} | "
              f"{row['rate'] / one['rate']:.2f} | {row['rate'] / same_cores['rate']:.2f} | {row['wall']:.1f} |")


if __name__ == "__main__":
    main()
