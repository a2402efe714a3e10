"""Shared set-up for the benchmarks: the bundled tiny CLIP wrapped as a GCL model and real batches of the bundled
sample (tiled to the batch size asked for)."""

import statistics
import time


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
