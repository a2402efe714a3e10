"""(b) GradCache vs plain GCL: peak memory and time of one training step of the bundled tiny CLIP at large batches.

Each (mode, batch) runs in a fresh process. On the CPU the peak is the process's peak resident memory during the
step above what it held just before it (Linux `VmHWM`, reset through `/proc/self/clear_refs`); on a GPU it is
`torch.cuda.max_memory_allocated` above the memory allocated before the step. Prints ratios.

    python benchmarks/bench_cached.py [--batch_sizes 256 1024 2048] [--mini_batch_size 64]
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


def measure(mode: str, batch_size: int, mini_batch_size: int, steps: int) -> dict:
    from common import model_and_batch

    from trainer.losses import CachedLoss, GCLLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, batch = model_and_batch(batch_size)
    model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    loss_module = GCLLoss()
    cached = CachedLoss(loss_module, mini_batch_size)

    def step():
        model.zero_grad(set_to_none=False)  # gradients stay allocated: they are not part of what we compare
        if mode == "cached":
            loss, _, _ = cached(model, batch)
        else:
            out = model(**batch)
            loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale)
        loss.backward()

    step()  # warm-up: allocates gradients and caches
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size
        before = _read_status_kib("VmRSS") * 1024
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _read_status_kib("VmHWM") * 1024 - before
    return {"seconds": (time.perf_counter() - start) / steps, "peak_bytes": max(peak, 0), "device": device.type}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--mini_batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.mini_batch_size, args.steps)))
        return

    print(f"GradCache (mini-batch {args.mini_batch_size}) vs plain GCL, bundled tiny CLIP, {args.steps} steps each")
    print(f"{'N':>6} {'plain MiB':>10} {'cached MiB':>11} {'mem ratio':>10} {'plain s':>8} {'cached s':>9} {'time ratio':>11}")
    for batch_size in args.batch_sizes:
        results = {}
        for mode in ("plain", "cached"):
            command = [sys.executable, __file__, "--worker", mode, str(batch_size),
                       "--mini_batch_size", str(args.mini_batch_size), "--steps", str(args.steps)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
        plain, cached = results["plain"], results["cached"]
        print(f"{batch_size:>6} {plain['peak_bytes'] / 2**20:10.0f} {cached['peak_bytes'] / 2**20:11.0f} "
              f"{cached['peak_bytes'] / max(plain['peak_bytes'], 1):10.3f} {plain['seconds']:8.2f} "
              f"{cached['seconds']:9.2f} {cached['seconds'] / plain['seconds']:11.2f}")
    print(f"device: {results['plain']['device']}")


if __name__ == "__main__":
    main()
