"""GPU readiness check (run through `benchmarks/gpu_check.sh`): loss parity on the device, GCL vs CLIP training steps,
tiled vs full loss at large N; writes one JSON report.

On a CUDA machine:
  1. parity: the tiled and untiled GCL / CLIP / sigmoid GCL losses against autograd through the full logit matrix
     (tests/test_tiled_loss.py's reference), on the GPU, float64 (tol 1e-10) and float32 (tol 1e-5), every option
     and uneven tiles;
  2. steps: one training step (forward, loss, backward, AdamW) of a randomly initialised ViT-B/32-sized CLIP
     (transformers' CLIPConfig defaults: 12+12 layers, 224 px, patch 32, d = 512) under bf16 autocast with sdpa
     attention, GCL vs CLIP loss, N = 256 and 1024: median seconds and peak memory;
  3. loss: forward + backward of the GCL loss alone (d = 512), tiled vs full (and the autograd baseline), N = 16,384
     and 65,536: seconds and peak memory, "out of memory" where it does not fit.
Without CUDA it runs the same code in a reduced mode (a tiny CLIP, small N) so that the script itself is tested.

    python benchmarks/gpu_check.py --output gpu_check.json [--reduced]
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tiled_loss import autograd_full_gcl  # noqa: E402
from modeling_gcl import GCLModel  # noqa: E402
from trainer.losses import CLIPLoss, GCLLoss, clip_loss, gcl_loss, gcl_sigmoid_loss  # noqa: E402

MiB = 2**20


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class DevicePeak:
    """Peak memory above the start on CUDA; on the CPU the process's peak RSS above the start (Linux)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        from common import PeakMemory

        self.meter = PeakMemory(self.device)
        self.meter.start()
        return self

    def __exit__(self, *exc):
        self.peak_bytes = self.meter.stop()
        return False


def check_parity(device) -> dict:
    from tests.test_tiled_loss import OPTIONS, reference_gcl_loss

    results, worst = [], {"float64": 0.0, "float32": 0.0}
    tolerance = {"float64": 1e-10, "float32": 1e-5}
    for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        generator = torch.Generator(device=device).manual_seed(0)
        n, d = 37, 16
        base = [torch.nn.functional.normalize(torch.randn(n, d, generator=generator, device=device, dtype=dtype),
                                              dim=-1) for _ in range(3)]

        def grads_of(function):
            leaves = [x.clone().requires_grad_() for x in base]
            tau = torch.tensor(0.05, device=device, dtype=dtype, requires_grad=True)
            bias = torch.tensor(-4.0, device=device, dtype=dtype, requires_grad=True)
            loss = function(leaves, tau, bias)
            used = [x for x in (*leaves, tau, bias) if x.requires_grad]
            grads = torch.autograd.grad(loss, used, allow_unused=True)
            return [loss.detach()] + [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, used)]

        cases = {f"gcl[{name}]": (lambda kwargs: (
            lambda c, tau, b: reference_gcl_loss(c, c, 0, tau, **kwargs)[0],
            lambda tile: (lambda c, tau, b: gcl_loss(*c, tau, tile_size=tile, **kwargs)[0])))(kwargs)
            for name, kwargs in OPTIONS.items()}
        cases["clip"] = (lambda c, tau, b: clip_loss(c[0], c[1], tau)[0],
                         lambda tile: (lambda c, tau, b: clip_loss(c[0], c[1], tau, tile_size=tile)[0]))
        cases["gcl_sigmoid"] = (lambda c, tau, b: gcl_sigmoid_loss(*c, tau, b)[0],
                                lambda tile: (lambda c, tau, b: gcl_sigmoid_loss(*c, tau, b, tile_size=tile)[0]))
        for name, (reference, candidate) in cases.items():
            expected = grads_of(reference)
            for tile in (None, 5, 16, 1000):
                if tile is None and name in ("clip", "gcl_sigmoid"):
                    continue  # their untiled path is the reference itself
                got = grads_of(candidate(tile))
                error = max(float(((a - b).abs() / (1 + b.abs())).max()) for a, b in zip(got, expected))
                worst[dtype_name] = max(worst[dtype_name], error)
                results.append({"loss": name, "dtype": dtype_name, "tile_size": tile, "max_error": error,
                                "passed": error <= tolerance[dtype_name]})
    return {"cases": len(results), "passed": all(r["passed"] for r in results), "max_error": worst,
            "tolerance": tolerance, "failures": [r for r in results if not r["passed"]]}


def make_clip(reduced: bool):
    from transformers import CLIPConfig, CLIPModel

    if reduced:
        config = CLIPConfig(
            text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=2),
            projection_dim=64)
    else:
        config = CLIPConfig()  # ViT-B/32: 224 px, patch 32, 12 + 12 layers, projection 512
    torch.manual_seed(0)
    return CLIPModel._from_config(config, attn_implementation="sdpa"), config


def bench_steps(device, reduced: bool, sizes, repeats: int) -> list:
    clip, config = make_clip(reduced)
    results = []
    for n in sizes:
        generator = torch.Generator().manual_seed(n)
        image_size = config.vision_config.image_size
        batch = {
            "pixel_values": torch.randn(n, 3, image_size, image_size, generator=generator).to(device),
            "input_ids": torch.randint(0, config.text_config.vocab_size - 2, (n, 32), generator=generator).to(device),
            "attention_mask": torch.ones(n, 32, dtype=torch.long, device=device),
        }
        row = {"N": n}
        for name, loss_module in (("clip", CLIPLoss()), ("gcl", GCLLoss())):
            model = GCLModel.from_backbone(clip).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

            def step():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = model(**batch)
                    loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale)
                loss.backward()
                optimizer.step()

            try:
                step()  # warm-up (kernels, optimiser state)
                times = []
                with DevicePeak(device) as peak:
                    for _ in range(repeats):
                        synchronize(device)
                        start = time.perf_counter()
                        step()
                        synchronize(device)
                        times.append(time.perf_counter() - start)
                row[f"{name}_seconds"] = statistics.median(times)
                row[f"{name}_peak_MiB"] = round(peak.peak_bytes / MiB, 1)
            except torch.OutOfMemoryError:
                row[f"{name}_seconds"] = row[f"{name}_peak_MiB"] = "out of memory"
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if isinstance(row.get("gcl_seconds"), float) and isinstance(row.get("clip_seconds"), float):
            row["gcl_over_clip_time"] = row["gcl_seconds"] / row["clip_seconds"]
        results.append(row)
    return results


def bench_losses(device, sizes, dim: int, tile_size: int) -> list:
    results = []
    for n in sizes:
        row = {"N": n, "dim": dim, "tile_size": tile_size}
        for mode in ("tiled", "full", "autograd"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                generator = torch.Generator(device=device).manual_seed(0)
                columns = [torch.nn.functional.normalize(
                    torch.randn(n, dim, generator=generator, device=device), dim=-1).requires_grad_()
                    for _ in range(3)]
                tau = torch.tensor(0.05, device=device, requires_grad=True)
                with DevicePeak(device) as peak:
                    synchronize(device)
                    start = time.perf_counter()
                    if mode == "autograd":
                        loss = autograd_full_gcl(columns, tau)
                    elif mode == "tiled":
                        loss, _ = gcl_loss(*columns, tau, tile_size=tile_size)
                    else:  # gcl_loss's untiled path at any N (automatic tiling would start above 16,384 columns)
                        loss = _untiled_gcl(columns, tau)
                    loss.backward()
                    synchronize(device)
                    seconds = time.perf_counter() - start
                row[f"{mode}_seconds"] = seconds
                row[f"{mode}_peak_MiB"] = round(peak.peak_bytes / MiB, 1)
                row[f"{mode}_loss"] = loss.item()
                del loss, columns, tau
            except (torch.OutOfMemoryError, MemoryError):
                row[f"{mode}_seconds"] = row[f"{mode}_peak_MiB"] = "out of memory"
        if isinstance(row.get("full_peak_MiB"), float) and isinstance(row.get("tiled_peak_MiB"), float):
            row["tiled_over_full_memory"] = row["tiled_peak_MiB"] / max(row["full_peak_MiB"], 1e-9)
            row["tiled_over_full_time"] = row["tiled_seconds"] / row["full_seconds"]
        results.append(row)
    return results


def _untiled_gcl(columns, tau):
    """gcl_loss's untiled kernel at any N (the automatic choice would tile above 16,384 columns)."""
    from trainer.losses import softmax_contrastive_loss

    pairs = [(a, b, 1.0) for a in range(3) for b in range(3) if a != b]
    return softmax_contrastive_loss(columns, columns, 0, tau, spans=[range(3)] * 3, pairs=pairs)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes (the default without CUDA)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = args.reduced or device.type != "cuda"
    started = time.perf_counter()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})",
        "mode": "reduced" if reduced else "full",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    print(f"gpu_check: {report['device']}, {report['mode']} mode", flush=True)
    report["parity"] = check_parity(device)
    print(f"  parity: {report['parity']['cases']} cases, passed={report['parity']['passed']}, "
          f"max error {report['parity']['max_error']}", flush=True)
    report["steps"] = bench_steps(device, reduced, [16, 32] if reduced else [256, 1024], repeats=2 if reduced else 3)
    for row in report["steps"]:
        print(f"  step {row}", flush=True)
    report["loss"] = bench_losses(device, [256, 512] if reduced else [16384, 65536], 32 if reduced else 512,
                                  tile_size=128 if reduced else 8192)
    for row in report["loss"]:
        print(f"  loss {row}", flush=True)
    report["seconds"] = time.perf_counter() - started
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(report, indent=2))
    os.replace(temporary, path)  # atomic: a killed run leaves no half-written report
    print(f"gpu_check: wrote {path} in {report['seconds']:.0f} s", flush=True)
    if not report["parity"]["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
