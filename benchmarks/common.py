"""Shared set-up for the benchmarks: the bundled tiny CLIP wrapped as a GCL model and real batches of the bundled
sample (tiled to the batch size asked for)."""

import statistics
import time
from pathlib import Path

import torch

from modeling_gcl import GCLModel
from trainer import GCLCollator, load_bundled_tiny_clip, load_image_caption_dataset


def model_and_batch(batch_size: int, seed: int = 0):
    clip, processor = load_bundled_tiny_clip(seed)
    model = GCLModel.from_backbone(clip).train()
    dataset = load_image_caption_dataset()
    rows = [dataset[i % len(dataset)] for i in range(min(batch_size, len(dataset)))]
    batch = GCLCollator(processor)(rows)
    repeats = -(-batch_size // len(rows))
    batch = {k: v.repeat(repeats, *([1] * (v.dim() - 1)))[:batch_size] for k, v in batch.items()}
    return model, batch


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory of what runs between `start()` and `stop()`, above what was held at `start()`, in bytes.

    On a GPU: `torch.cuda.max_memory_allocated`. On the CPU: the process's peak resident set (Linux `VmHWM`, reset
    through `/proc/self/clear_refs`); torch's CPU tensors are plain malloc/mmap memory, which tracemalloc does not
    see. Run one measurement per process (a fresh subprocess), so that memory freed by an earlier one and kept by the
    allocator does not hide this one's peak."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.before = _status_kib("VmRSS") * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return max(torch.cuda.max_memory_allocated() - self.before, 0)
        return max(_status_kib("VmHWM") * 1024 - self.before, 0)
