"""Input pipeline: images per second of the `GCLCollator` (decode, convert to RGB, resize, crop, normalise, and
tokenise the captions) against a bare loop of PIL + the same image processor, through a `DataLoader` with 0, 1 and 2
workers, on the bundled sample's images (repeated), measured side by side in one run.

    bare        PIL.Image.open(bytes).convert("RGB") for each row, then image_processor(images, return_tensors="pt")
    bare+text   the same plus the tokenizer on the captions (padding to the longest, as the collator does)
    collator    GCLCollator(processor) on the rows (it also checks each row and names a bad one)
Target: collator >= 0.9 x bare. Prints which image-processor class (backend) does the work.

    python benchmarks/bench_input_pipeline.py [--images 1024] [--batch_size 64] [--workers 0 1 2]
"""

import argparse
import io
import time

import datasets
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainer import GCLCollator, load_bundled_tiny_clip, load_image_caption_dataset


class Rows(torch.utils.data.Dataset):
    """Plain dict rows, as a map-style dataset hands them to a collator."""

    def __init__(self, dataset, count):
        self.dataset, self.count = dataset, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.dataset[index % len(self.dataset)]


def open_image(value: dict) -> Image.Image:
    """A `datasets` image dict: encoded bytes, or a path to the file."""
    return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])


class BareCollate:
    def __init__(self, processor, with_text: bool):
        self.image_processor, self.tokenizer, self.with_text = processor.image_processor, processor.tokenizer, with_text

    def __call__(self, rows):
        images = [open_image(row["image"]).convert("RGB") for row in rows]
        batch = {"pixel_values": self.image_processor(images=images, return_tensors="pt")["pixel_values"]}
        if self.with_text:
            batch.update(self.tokenizer([row["caption"] for row in rows], padding=True, truncation=True,
                                        return_tensors="pt"))
        return batch


def images_per_second(dataset, collate, batch_size, workers):
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not counted
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += batch["pixel_values"].shape[0]
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="alternating repeats; the best of each is shown")
    args = parser.parse_args()
    _, processor = load_bundled_tiny_clip(0)
    source = load_image_caption_dataset()
    if source.features["image"].decode:  # rows carry the encoded file (bytes or path), as a dataset on disk does
        source = source.cast_column("image", datasets.Image(decode=False))
    sample = source[0]["image"]
    width, height = open_image(sample).size
    dataset = Rows(source, args.images)
    image_processor = processor.image_processor
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; image processor "
          f"{type(image_processor).__module__}.{type(image_processor).__name__} "
          f"(size {image_processor.size}, crop {image_processor.crop_size}); source images e.g. {width}x{height}; "
          f"{args.images} images in batches of {args.batch_size}")
    collates = {"bare": BareCollate(processor, False), "bare+text": BareCollate(processor, True),
                "collator": GCLCollator(processor)}
    print(f"{'workers':>8} " + " ".join(f"{name + ' img/s':>15}" for name in collates)
          + f" {'collator/bare':>14} {'collator/bare+text':>19}")
    for workers in args.workers:
        best = {name: 0.0 for name in collates}
        for round_index in range(args.rounds):
            names = list(collates) if round_index % 2 == 0 else list(collates)[::-1]
            for name in names:
                best[name] = max(best[name], images_per_second(dataset, collates[name], args.batch_size, workers))
        print(f"{workers:>8} " + " ".join(f"{best[name]:15.1f}" for name in collates)
              + f" {best['collator'] / best['bare']:14.3f} {best['collator'] / best['bare+text']:19.3f}", flush=True)


if __name__ == "__main__":
    main()
