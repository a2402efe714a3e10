"""Tiled vs full GCL loss: peak memory and time of forward + backward, and one GradCache + tiles training step at a
batch the full loss cannot hold.

(a) The loss alone on random L2-normalised embeddings (d = --dim), forward + backward, three implementations:
    - `autograd`: autograd through the whole 3N × 3N matrix (log_softmax and per-pair lookups): `gcl_loss` before
      the tiled kernel, kept here as the baseline;
    - `full`: today's untiled `gcl_loss` kernel (what `tile_size=None` runs up to 16,384 columns; here at every N):
      one kept 3N × 3N buffer and a hand-written backward;
    - `tiled`: `gcl_loss(..., tile_size=--tile_size)`.
(b) With --train_step_pairs N: one full training step (forward, loss, backward, AdamW step) of the bundled tiny CLIP
    at N pairs with GradCache (--mini_batch_size) and tiles.

Every measurement runs in a fresh process (see `common.PeakMemory`: peak RSS on the CPU, max allocated on a GPU,
above what the process held before the step). Prints side-by-side ratios.

    python benchmarks/bench_tiled_loss.py                          # N = 1k..8k, a few minutes on 2 cores
    python benchmarks/bench_tiled_loss.py --sizes 16384 --modes full tiled
    python benchmarks/bench_tiled_loss.py --sizes --train_step_pairs 16384   # the training step only
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

GiB, MiB = 2**30, 2**20
PAIRS = [(a, b, 1.0) for a in range(3) for b in range(3) if a != b]  # the six GCL pairs as block indices


def autograd_full_gcl(columns, temperature):
    """GCL through autograd on the whole matrix (the implementation before the tiled kernel)."""
    n = columns[0].shape[0]
    logits = torch.cat(columns) @ torch.cat(columns).T / temperature
    rows = torch.arange(3 * n)
    logits[rows, rows] = float("-inf")
    log_probs = logits.log_softmax(dim=1)
    sample = torch.arange(n)
    terms = [-log_probs[a * n + sample, b * n + sample].mean() for a in range(3) for b in range(3) if a != b]
    return sum(terms) / 6


def measure_loss(mode: str, n: int, dim: int, tile_size: int, repeats: int) -> dict:
    from common import PeakMemory

    from trainer.losses import gcl_loss, softmax_contrastive_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=device).manual_seed(0)
    columns = [torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, device=device), dim=-1)
               .requires_grad_() for _ in range(3)]
    temperature = torch.tensor(0.05, device=device, requires_grad=True)

    def step():
        for x in (*columns, temperature):
            x.grad = None
        if mode == "autograd":
            loss = autograd_full_gcl(columns, temperature)
        elif mode == "tiled":
            loss, _ = gcl_loss(*columns, temperature, tile_size=tile_size)
        else:  # gcl_loss's untiled kernel, also above the size where gcl_loss would tile automatically
            loss, _ = softmax_contrastive_loss(columns, columns, 0, temperature, spans=[range(3)] * 3, pairs=PAIRS)
        loss.backward()
        return loss.item()
    meter = PeakMemory(device)
    times, peaks = [], []
    for index in range(repeats + (1 if n <= 2048 else 0)):  # small sizes get a warm-up run
        meter.start()
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peaks.append(meter.stop())
    times = times[1:] if n <= 2048 else times
    # The first run's peak: later runs may reuse memory the allocator kept from it, which RSS does not show again.
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peaks[0], "loss": loss, "device": device.type}


def measure_train_step(n: int, mini_batch_size: int, tile_size: int) -> dict:
    from common import PeakMemory, model_and_batch

    from trainer.losses import CachedLoss, GCLLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, batch = model_and_batch(n)
    model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cached = CachedLoss(GCLLoss(tile_size=tile_size), mini_batch_size)
    meter = PeakMemory(device)
    meter.start()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = cached(model, batch)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": meter.stop(), "loss": loss.item(), "device": device.type}


def run_worker(arguments: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", *arguments]
    # A fixed mmap threshold: glibc otherwise raises it after a large free and keeps later large blocks on the heap,
    # where a peak-RSS measurement cannot see them being reused.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def full_matrix_gib(n: int) -> float:
    """One float32 3N × 3N matrix."""
    return 9 * n * n * 4 / GiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", default=["autograd", "full", "tiled"],
                        choices=["autograd", "full", "tiled"])
    parser.add_argument("--dim", type=int, default=128, help="embedding size (the bundled tiny CLIP's is 128)")
    parser.add_argument("--tile_size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max_autograd_gib", type=float, default=1.0,
                        help="skip the autograd baseline where one 3N x 3N float32 matrix exceeds this (it holds "
                             "about three)")
    parser.add_argument("--train_step_pairs", type=int, default=0)
    parser.add_argument("--mini_batch_size", type=int, default=256)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "loss":
            result = measure_loss(rest[0], int(rest[1]), args.dim, args.tile_size, args.repeats)
        else:
            result = measure_train_step(int(rest[0]), args.mini_batch_size, args.tile_size)
        print(json.dumps(result))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    if args.sizes:
        print(f"(a) GCL loss forward + backward, d = {args.dim}, tile {args.tile_size}: peak MiB above the inputs, "
              "seconds; ratios against `full` (today's untiled gcl_loss) and `autograd` (the previous one)")
        header = f"{'N':>6} " + " ".join(f"{m + ' MiB':>13} {m + ' s':>10}" for m in args.modes)
        print(header + f" {'tiled/full mem':>15} {'tiled/full time':>16} {'tiled/autograd mem':>19} "
                       f"{'full/autograd mem':>18} {'full/autograd time':>19}")
        for n in args.sizes:
            results = {}
            for mode in args.modes:
                if mode == "autograd" and full_matrix_gib(n) > args.max_autograd_gib:
                    results[mode] = {"error": f"skipped (~{3 * full_matrix_gib(n):.0f} GiB)"}
                    continue
                results[mode] = run_worker(["loss", mode, str(n), "--dim", str(args.dim), "--tile_size",
                                            str(args.tile_size), "--repeats", str(args.repeats)])
            cells = []
            for mode in args.modes:
                r = results[mode]
                cells.append(f"{r['peak_bytes'] / MiB:13.0f} {r['seconds']:10.2f}" if "error" not in r
                             else f"{r['error'][:24]:>24}")

            def ratio(a, b, key):
                ra, rb = results.get(a, {}), results.get(b, {})
                if key not in ra or key not in rb:
                    return float("nan")
                return ra[key] / max(rb[key], 1e-12)

            print(f"{n:>6} " + " ".join(cells)
                  + f" {ratio('tiled', 'full', 'peak_bytes'):15.4f} {ratio('tiled', 'full', 'seconds'):16.2f}"
                  f" {ratio('tiled', 'autograd', 'peak_bytes'):19.4f} {ratio('full', 'autograd', 'peak_bytes'):18.3f}"
                  f" {ratio('full', 'autograd', 'seconds'):19.2f}", flush=True)
            losses = [results[m]["loss"] for m in args.modes if "loss" in results[m]]
            if len(losses) > 1 and max(losses) - min(losses) > 1e-4:
                print(f"       WARNING: the implementations disagree: {losses}")
    if args.train_step_pairs:
        n = args.train_step_pairs
        print(f"(b) one training step of the bundled tiny CLIP at {n} pairs, GradCache mini-batch "
              f"{args.mini_batch_size}, loss tiles {args.tile_size} (the full loss would hold one 3N x 3N matrix of "
              f"{full_matrix_gib(n):.1f} GiB, the autograd baseline about {3 * full_matrix_gib(n):.0f} GiB)")
        r = run_worker(["step", str(n), "--mini_batch_size", str(args.mini_batch_size), "--tile_size",
                        str(args.tile_size)])
        if "error" in r:
            print(f"  failed: {r['error']}")
        else:
            print(f"  peak {r['peak_bytes'] / MiB:.0f} MiB above the model and batch, {r['seconds']:.1f} s, "
                  f"loss {r['loss']:.4f} ({r['device']})")


if __name__ == "__main__":
    main()
