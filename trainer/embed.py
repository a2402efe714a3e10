# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-embed`: embed a corpus (images, texts or image+text pairs) with a GCL model into sharded files with ids, for
deployment; `GCLRetriever` (`trainer/retrieval.py`) then searches it.

    gcl-embed ./gcl-output --data pairs/ --output_dir corpus/ --modality fused --faiss_index Flat
    torchrun --nproc_per_node 4 -m trainer.embed ./gcl-output --data pairs/ --output_dir corpus/

The output folder holds `manifest.json` (the model and data fingerprints, the layout, which shards are complete),
`shard-00000-of-00012.safetensors` ... (`embeddings` `(rows, dim)` float32 L2-normalised, `rows` the data's row
numbers, the ids in the file's metadata; or `.parquet` with `id`, `row`, `embedding` columns) and optionally
`index.faiss`. Every file is written to a temporary name and renamed into place, so a shard is complete or absent.
Run the same command again after a kill and only the missing shards are embedded; a folder holding another model's
or another data's embeddings is refused. Under `torchrun` / `accelerate launch` the shards are split across the
processes (shard `i` to rank `i % world_size`).
"""

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import OutputDirInUseError, atomic_write, atomic_write_json, output_dir_lock
from .cli_help import positive_int
from .backbones import load_model_and_processor
from .data import BadSampleError, DataError, check_caption, load_image_caption_dataset, load_rgb_image
from .data.jsonl import read_jsonl_objects
from .evaluation import distributed as sharding
from .evaluation.encoding import GCLEmbedder, RetrievalItem, _embed_batch, _image_fingerprint, evaluation_mode

logger = logging.getLogger("gcl-embed")

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
FORMAT_VERSION = 1
MODALITIES = {"image": "i", "text": "t", "fused": "it"}
STORAGES = ("safetensors", "parquet")


class EmbedError(ValueError):
    """A `gcl-embed` job that cannot run as asked (a folder of another job, bad arguments); one-line message."""


@dataclass
class CorpusRows:
    """The rows to embed: the dataset, its ids (strings) and each row's number in the data as loaded."""

    dataset: object
    ids: list[str]
    rows: list[int]
    source: str


def _row_numbers(dataset) -> list[int]:
    if "gcl_row_index" in dataset.column_names:
        return [int(row) for row in dataset["gcl_row_index"]]
    return list(range(len(dataset)))


def load_corpus(data: str | None, modality: str, image_column: str = "image", caption_column: str = "caption",
                id_column: str | None = None, split: str = "train", dataset_config_name: str | None = None,
                data_format: str = "auto", image_root: str | None = None, max_samples: int | None = None,
                skip_bad_rows: bool = False) -> CorpusRows:
    r"""
    Read what `gcl-embed` embeds: any `gcl-train` data format (imagefolder, JSONL pairs, LCS-558K, a Hub dataset of
    pairs; `None` = the bundled sample), a folder written by `datasets.Dataset.save_to_disk`, a JSONL of texts (for
    `modality="text"`), an image folder without captions (for `modality="image"`) or any Hub dataset name. Only the
    columns the modality needs must exist. Ids come from `id_column` (unique, non-empty) or are the row numbers.
    `skip_bad_rows` lets the `gcl-train` readers skip (and count in a warning) rows they reject while reading.
    """
    import datasets

    needed = {"image": [image_column], "text": [caption_column], "fused": [image_column, caption_column]}[modality]
    path = Path(data) if data is not None else None
    if path is not None and path.is_dir() and any((path / name).is_file() for name in
                                                  ("dataset_info.json", "state.json", "dataset_dict.json")):
        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as error:  # a damaged save_to_disk folder
            raise DataError(f"{path}: cannot read this datasets folder ({type(error).__name__}: {error}).") from None
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(f"{path}: no split {split!r}; it has {sorted(dataset)}.")
            dataset = dataset[split]
    elif path is not None and path.suffix == ".jsonl" and path.is_file() and modality == "text":
        texts, ids = [], []
        for line, row in read_jsonl_objects(path):
            if caption_column not in row:
                raise DataError(f"{path}:{line}: no {caption_column!r} field; the row has {sorted(row)}.")
            texts.append(row[caption_column])
            ids.append(row.get(id_column) if id_column else line)
        if not texts:
            raise DataError(f"{path}: no rows.")
        # Only the needed columns: a stray column whose type changes between rows cannot break loading.
        dataset = datasets.Dataset.from_dict({caption_column: [t if isinstance(t, str) else json.dumps(t) for t in texts],
                                              "gcl_source_type": [type(t).__name__ for t in texts],
                                              **({id_column: [None if i is None else str(i) for i in ids]}
                                                 if id_column else {})})
    elif path is not None and path.is_dir() and modality == "image" and not any(
            (path / name).exists() for name in ("metadata.jsonl", "metadata.csv", "metadata.parquet")):
        dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    elif path is None or path.exists() or str(data).startswith((".", "/", "~")) or modality == "fused":
        dataset = load_image_caption_dataset(data, image_column, caption_column, split, dataset_config_name,
                                             data_format=data_format, image_root=image_root,
                                             skip_bad_rows=skip_bad_rows)
    else:  # a Hub dataset; only the columns this modality needs have to exist
        dataset = datasets.load_dataset(str(data), dataset_config_name, split=split)
    missing = [column for column in needed + ([id_column] if id_column else []) if column not in dataset.column_names]
    if missing:
        raise DataError(f"{data or 'the bundled sample'}: missing column(s) {missing}; the data has "
                        f"{dataset.column_names}. Set --image_column / --caption_column / --id_column.")
    if image_column in dataset.column_names and isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))  # decode lazily, name bad files
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{data or 'the bundled sample'}: no rows to embed.")
    rows = _row_numbers(dataset)
    source = str(data) if data is not None else "the bundled sample"
    if id_column:
        ids, first = [], {}
        for row, value in zip(rows, dataset[id_column]):
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, (list, dict)):
                raise DataError(f"{source}: row {row}: id {value!r} in column {id_column!r} is empty or not a scalar.")
            value = str(value)
            if value in first:
                raise DataError(f"{source}: row {row}: duplicate id {value!r} (first at row {first[value]}).")
            first[value] = row
            ids.append(value)
    else:
        ids = [str(row) for row in rows]
    return CorpusRows(dataset, ids, rows, source)


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def _fingerprint_rows(corpus: CorpusRows, modality: str, image_column: str, caption_column: str,
                      shard_size: int) -> list[str]:
    """A hash per shard of what it embeds (ids, texts, images by path + size + mtime or by their bytes)."""
    hashes = []
    for start, end in shard_ranges(len(corpus.ids), shard_size):
        digest = hashlib.blake2b(digest_size=16)
        block = corpus.dataset[start:end]
        for offset in range(end - start):
            entry = [corpus.ids[start + offset], corpus.rows[start + offset]]
            if modality in ("text", "fused"):
                entry.append(repr(block[caption_column][offset]))
            if modality in ("image", "fused"):
                image = block[image_column][offset]
                entry.append(_image_fingerprint(image) if image is not None else None)
            digest.update(json.dumps(entry, default=str).encode())
        hashes.append(digest.hexdigest())
    return hashes


def shard_file_name(index: int, count: int, storage: str) -> str:
    return f"shard-{index:05d}-of-{count:05d}.{storage}"


def write_shard(path: Path, embeddings: torch.Tensor, ids: list[str], rows: list[int], job: str,
                skipped: list[str], storage: str) -> None:
    """One shard, atomically: it is complete under its final name or not there at all."""
    metadata = {"job": job, "ids": json.dumps(ids), "skipped": json.dumps(skipped), "format_version": str(FORMAT_VERSION)}
    if storage == "safetensors":
        from safetensors.torch import save_file

        tensors = {"embeddings": embeddings.contiguous().float(), "rows": torch.tensor(rows, dtype=torch.long)}
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = embeddings.shape[1] if embeddings.dim() == 2 else 0
        table = pa.table({"id": pa.array(ids, pa.string()), "row": pa.array(rows, pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(
                              pa.array(embeddings.float().reshape(-1).numpy()), dim)})
        table = table.replace_schema_metadata({key: value for key, value in metadata.items()})
        atomic_write(path, lambda temporary: pq.write_table(table, temporary))


def read_shard(path: Path) -> tuple[torch.Tensor, list[str], list[int], dict]:
    """`(embeddings, ids, rows, metadata)` of a shard; a damaged file raises `EmbedError` naming it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                embeddings, rows = handle.get_tensor("embeddings"), handle.get_tensor("rows").tolist()
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            metadata = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
            rows = table.column("row").to_pylist()
            flat = table.column("embedding").combine_chunks()
            dim = flat.type.list_size
            embeddings = torch.from_numpy(flat.flatten().to_numpy(zero_copy_only=False).copy()).reshape(-1, dim)
        ids = json.loads(metadata["ids"])
    except Exception as error:
        raise EmbedError(f"{path}: not a readable gcl-embed shard ({type(error).__name__}: {error}).") from None
    if len(ids) != embeddings.shape[0] or len(rows) != embeddings.shape[0]:
        raise EmbedError(f"{path}: {embeddings.shape[0]} embeddings but {len(ids)} ids and {len(rows)} rows.")
    return embeddings, ids, rows, metadata


def _shard_metadata(path: Path) -> dict:
    """A shard's metadata from its header (safetensors) or footer (parquet), without reading the embeddings; both
    formats check there that the file is whole."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return dict(handle.metadata() or {})
        import pyarrow.parquet as pq

        return {key.decode(): value.decode() for key, value in (pq.read_schema(path).metadata or {}).items()}
    except Exception as error:
        raise EmbedError(f"{path}: not a readable gcl-embed shard ({type(error).__name__}: {error}).") from None


def _shard_is_complete(path: Path, job: str) -> bool:
    """A shard file of this job that reads back (a shard of another job, or one damaged afterwards, is redone)."""
    if not path.is_file():
        return False
    try:
        metadata = _shard_metadata(path)
    except EmbedError as error:
        logger.warning("%s: redoing it.", error)
        return False
    return metadata.get("job") == job


def _job_key(identity: dict) -> str:
    return hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=16).hexdigest()


def _describe_difference(old: dict, new: dict) -> str:
    differences = []
    for section in ("model", "data"):
        if old.get(section, {}).get("fingerprint") != new[section]["fingerprint"]:
            differences.append(f"another {section} ({old.get(section, {}).get('name_or_path') or old.get(section, {}).get('source')!s})")
    for key in ("modality", "shard_size", "storage"):
        if old.get(key) != new[key]:
            differences.append(f"{key} {old.get(key)!r} (now {new[key]!r})")
    return ", ".join(differences) or "another job"


def prepare_output_dir(output_dir: Path, manifest: dict, overwrite: bool) -> None:
    """Create the folder or check that it holds this job (refusing another model's or data's embeddings unless
    `overwrite`), and clear what a killed run left half-written (temporary files)."""
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            raise EmbedError(f"{manifest_path}: damaged manifest ({error}); remove the folder or pass --overwrite.") from None
        if old.get("job") != manifest["job"]:
            if not overwrite:
                raise EmbedError(f"{output_dir} holds embeddings of {_describe_difference(old, manifest)}; refusing "
                                 "to mix them. Use another --output_dir, or --overwrite to replace them.")
            _remove_outputs(output_dir)
    elif output_dir.is_dir() and any(not entry.name.startswith(".") for entry in output_dir.iterdir()):
        if not overwrite:
            raise EmbedError(f"{output_dir} is not empty and has no {MANIFEST_NAME}: not a gcl-embed folder. Use an "
                             "empty or new --output_dir, or --overwrite.")
        _remove_outputs(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in output_dir.glob(".*.tmp"):  # an atomic write a kill interrupted
        leftover.unlink(missing_ok=True)


def _remove_outputs(output_dir: Path) -> None:
    for pattern in ("shard-*", MANIFEST_NAME, INDEX_NAME):
        for entry in output_dir.glob(pattern):
            entry.unlink()


def _write_manifest(output_dir: Path, manifest: dict, shards: list[Path]) -> dict:
    done = [index for index, path in enumerate(shards) if _shard_is_complete(path, manifest["job"])]
    manifest = {**manifest, "complete_shards": done, "complete": len(done) == len(shards)}
    atomic_write_json(output_dir / MANIFEST_NAME, manifest)
    return manifest


def _prepare_row(block: dict, offset: int, row: int, modality: str, image_column: str, caption_column: str,
                 source: str) -> RetrievalItem:
    """Decode and check one row (BadSampleError names its row and file)."""
    text = image = None
    if modality in ("text", "fused"):
        value = block[caption_column][offset]
        if block.get("gcl_source_type") is not None and block["gcl_source_type"][offset] != "str":
            raise BadSampleError(f"row {row} ({source}): {caption_column} is a {block['gcl_source_type'][offset]}, "
                                 "expected a string.")
        text = check_caption(value, row, source if modality == "text" else None)
    if modality in ("image", "fused"):
        image = load_rgb_image(block[image_column][offset], row=row)
    return RetrievalItem(text=text, image=image, source=f"{source}: row {row}")


def embed_corpus(model, processor, corpus: CorpusRows, output_dir: str | os.PathLike, modality: str = "fused",
                 image_column: str = "image", caption_column: str = "caption", batch_size: int = 64,
                 shard_size: int = 10000, storage: str = "safetensors", skip_bad_samples: bool = False,
                 faiss_index: str | None = None, overwrite: bool = False, show_progress: bool = True,
                 model_name_or_path: str | None = None, fusion: str | None = None) -> dict:
    r"""
    Embed `corpus` into `output_dir` (see the module docstring for the layout); every process of a
    `torch.distributed` group must call it with the same arguments. Returns the manifest (on every process).

    Args:
        model, processor: a [`GCLModel`] and its [`GCLProcessor`].
        corpus ([`CorpusRows`]): from `load_corpus`.
        modality (`str`): `"image"`, `"text"` or `"fused"` (the model's fusion of each row's image and caption).
        shard_size (`int`): rows per shard (the unit of resumption and of the split across processes).
        storage (`str`): `"safetensors"` or `"parquet"`.
        skip_bad_samples (`bool`): skip (and count, naming them in the manifest) rows whose image cannot be read or
            whose caption is empty, instead of stopping at the first with an error naming its row and file.
        faiss_index (`str`, *optional*): build a FAISS index of this `index_factory` type (e.g. `"Flat"`).
        model_name_or_path, fusion: recorded in the manifest so `GCLRetriever.load` can load the model again.
    """
    if modality not in MODALITIES:
        raise EmbedError(f"modality {modality!r}; expected one of {list(MODALITIES)}.")
    if storage not in STORAGES:
        raise EmbedError(f"storage {storage!r}; expected one of {list(STORAGES)}.")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EmbedError(f"{name} must be a positive integer, got {value!r}.")
    if faiss_index:
        from .evaluation.search import faiss_available

        if not faiss_available():
            raise EmbedError("--faiss_index needs faiss: pip install faiss-cpu (the `faiss` extra).")
    output_dir = Path(output_dir)
    embedder = GCLEmbedder(model, processor)
    rank, world_size = sharding.world()
    main_process = rank == 0
    ranges = shard_ranges(len(corpus.ids), shard_size)
    shard_hashes = _fingerprint_rows(corpus, modality, image_column, caption_column, shard_size)
    data_fingerprint = hashlib.blake2b("".join(shard_hashes).encode(), digest_size=16).hexdigest()
    identity = {"model": embedder.fingerprint, "data": data_fingerprint, "modality": modality,
                "shard_size": shard_size, "storage": storage, "version": FORMAT_VERSION}
    manifest = {
        "format": "gcl-embed", "format_version": FORMAT_VERSION, "job": _job_key(identity),
        "model": {"name_or_path": model_name_or_path, "fusion": fusion, "fingerprint": embedder.fingerprint,
                  "model_fusion": getattr(model.config, "fusion", None)},
        "data": {"source": corpus.source, "fingerprint": data_fingerprint, "num_rows": len(corpus.ids),
                 "image_column": image_column if modality != "text" else None,
                 "caption_column": caption_column if modality != "image" else None},
        "modality": modality, "shard_size": shard_size, "storage": storage, "num_shards": len(ranges),
        "shards": [shard_file_name(index, len(ranges), storage) for index in range(len(ranges))],
        "skip_bad_samples": skip_bad_samples,
    }
    failure = None
    with contextlib.ExitStack() as lock:
        if main_process:
            try:
                # A second gcl-embed into the same folder stops at once (the lock dies with its process).
                lock.enter_context(output_dir_lock(output_dir))
                prepare_output_dir(output_dir, manifest, overwrite)
            except Exception as error:
                failure = error
        if world_size > 1:
            sharding.raise_if_any_failed(failure)  # every process stops on a refused folder, or none does
        elif failure is not None:
            raise failure
        return _embed_shards(model, embedder, corpus, output_dir, manifest, ranges, modality, image_column,
                             caption_column, batch_size, storage, skip_bad_samples, faiss_index, show_progress)


def _embed_shards(model, embedder, corpus: CorpusRows, output_dir: Path, manifest: dict, ranges: list, modality: str,
                  image_column: str, caption_column: str, batch_size: int, storage: str, skip_bad_samples: bool,
                  faiss_index: str | None, show_progress: bool) -> dict:
    """The shards this process owns that are not complete yet, then (rank 0) the final manifest and index."""
    rank, world_size = sharding.world()
    main_process = rank == 0
    failure = None
    shards = [output_dir / name for name in manifest["shards"]]
    todo = [index for index in range(len(ranges)) if index % world_size == rank
            and not _shard_is_complete(shards[index], manifest["job"])]
    mine = len(range(rank, len(ranges), world_size))
    if main_process and len(todo) < mine:
        logger.info("Resuming: %d of this process's %d shards are already complete.", mine - len(todo), mine)
    if main_process:
        manifest = _write_manifest(output_dir, manifest, shards)
    progress = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo), desc="Embedding", unit="row",
                    disable=not (show_progress and main_process))
    started = time.monotonic()
    try:
        with evaluation_mode(model):
            for index in todo:
                start, end = ranges[index]
                block = corpus.dataset[start:end]
                items, ids, rows, skipped = [], [], [], []
                for offset in range(end - start):
                    row = corpus.rows[start + offset]
                    try:
                        items.append(_prepare_row(block, offset, row, modality, image_column, caption_column,
                                                  corpus.source))
                    except BadSampleError as error:
                        if not skip_bad_samples:
                            raise BadSampleError(f"{corpus.source}: {error}") from None
                        skipped.append(str(error))
                        continue
                    ids.append(corpus.ids[start + offset])
                    rows.append(row)
                chunks = []
                for batch_start in range(0, len(items), batch_size):
                    chunks.append(_embed_batch(embedder, items[batch_start : batch_start + batch_size]))
                    progress.update(len(items[batch_start : batch_start + batch_size]))
                progress.update(len(skipped))
                dim = chunks[0].shape[1] if chunks else 0
                embeddings = torch.cat(chunks) if chunks else torch.zeros(0, dim)
                write_shard(shards[index], embeddings, ids, rows, manifest["job"], skipped, storage)
                if main_process:  # rank 0 records what is on disk (the other ranks' shards too, as far as done)
                    manifest = _write_manifest(output_dir, manifest, shards)
    except Exception as error:
        failure = error
    progress.close()
    if world_size > 1:
        sharding.raise_if_any_failed(failure)
    elif failure is not None:
        raise failure
    elapsed = time.monotonic() - started  # every process has finished its shards (the exchange above waits)
    embedded_here = sum(ranges[i][1] - ranges[i][0] for i in todo)
    if world_size > 1:  # rows embedded in this run by all processes together
        count = torch.tensor([embedded_here], dtype=torch.long, device=sharding.collective_device())
        torch.distributed.all_reduce(count)
        embedded_here = int(count.item())
    final_failure = None
    if main_process:
        try:
            manifest = _finish(output_dir, manifest, shards, corpus, faiss_index)
        except Exception as error:
            final_failure = error
    if world_size > 1:
        sharding.raise_if_any_failed(final_failure)  # also the barrier: nobody returns before the manifest is final
        manifest = json.loads((output_dir / MANIFEST_NAME).read_text())
    elif final_failure is not None:
        raise final_failure
    manifest["seconds"] = elapsed
    manifest["rows_embedded_here"] = embedded_here
    return manifest


def _finish(output_dir: Path, manifest: dict, shards: list[Path], corpus: CorpusRows, faiss_index: str | None) -> dict:
    """The final manifest (counts, skipped rows, dim) and the optional FAISS index, once every shard is written."""
    manifest = _write_manifest(output_dir, manifest, shards)
    if not manifest["complete"]:  # a shard vanished or was damaged while the others ran
        missing = sorted(set(range(len(shards))) - set(manifest["complete_shards"]))
        raise EmbedError(f"{output_dir}: shard(s) {missing} are not complete; run the same command again.")
    skipped, parts = [], []
    for path in shards:
        embeddings, _, _, metadata = read_shard(path)
        skipped += json.loads(metadata.get("skipped", "[]"))
        parts.append(embeddings)
    embeddings = torch.cat([part for part in parts if part.shape[0]]) if any(p.shape[0] for p in parts) else None
    if embeddings is None:
        raise EmbedError(f"{corpus.source}: every row was bad; nothing was embedded.")
    manifest["dim"] = embeddings.shape[1]
    manifest["num_embedded"] = embeddings.shape[0]
    manifest["num_skipped"] = len(skipped)
    manifest["skipped_examples"] = skipped[:20]
    if faiss_index:
        _write_faiss_index(output_dir / INDEX_NAME, embeddings, faiss_index)
        manifest["faiss_index"] = {"file": INDEX_NAME, "factory": faiss_index}
    atomic_write_json(output_dir / MANIFEST_NAME, manifest)
    return manifest


def _write_faiss_index(path: Path, embeddings: torch.Tensor, factory: str) -> None:
    import faiss

    from .evaluation.search import FaissIndex

    index = FaissIndex(embeddings, index_factory=factory).index
    atomic_write(path, lambda temporary: faiss.write_index(index, temporary))


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="gcl-embed", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("model", help="A GCL checkpoint or a CLIP-family checkpoint (directory or Hub id).")
    parser.add_argument("--data", default=None, help="Any gcl-train data (imagefolder, JSONL, LCS-558K, Hub dataset), "
                                                     "a save_to_disk folder, or a JSONL of texts. Default: the bundled "
                                                     "sample.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--modality", choices=list(MODALITIES), default="fused")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--id_column", default=None, help="Column of unique ids (default: the row numbers).")
    parser.add_argument("--split", default="train")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--data_format", default="auto", choices=["auto", "pairs", "lcs558k"])
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--max_samples", type=positive_int, default=None)
    parser.add_argument("--fusion", default=None, help="Fusion for a CLIP checkpoint (default sum = CLIP-SF).")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--shard_size", type=positive_int, default=10000, help="Rows per shard.")
    parser.add_argument("--storage", choices=list(STORAGES), default="safetensors")
    parser.add_argument("--faiss_index", default=None, help="Also build a FAISS index (index_factory string, e.g. "
                                                            "Flat, HNSW32, IVF1024,Flat).")
    parser.add_argument("--skip_bad_samples", action="store_true",
                        help="Skip unreadable images / empty captions (counted, listed in the manifest).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a folder of another job's embeddings.")
    parser.add_argument("--device", default=None, help="Default: cuda:LOCAL_RANK if available, else cpu.")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = sharding.local_device(args.device)
    sharding.init_from_launcher(device)
    try:
        model, processor = load_model_and_processor(args.model, fusion=args.fusion)
    except (ValueError, OSError) as error:
        raise SystemExit(f"gcl-embed: {_one_line(error)}") from None
    model.to(device).eval()
    corpus = load_corpus(args.data, args.modality, args.image_column, args.caption_column, args.id_column, args.split,
                         args.dataset_config_name, args.data_format, args.image_root, args.max_samples,
                         skip_bad_rows=args.skip_bad_samples)
    local = Path(args.model)
    name_or_path = str(local.resolve()) if local.exists() else args.model
    manifest = embed_corpus(model, processor, corpus, args.output_dir, args.modality, args.image_column,
                            args.caption_column, args.batch_size, args.shard_size, args.storage, args.skip_bad_samples,
                            args.faiss_index, args.overwrite, not args.no_progress, name_or_path, args.fusion)
    if sharding.is_main_process():
        print(f"gcl-embed: {manifest['num_embedded']} of {manifest['data']['num_rows']} rows embedded "
              f"({args.modality}, dim {manifest['dim']}) into {manifest['num_shards']} shard(s) in {args.output_dir}"
              + (f"; index {INDEX_NAME}" if args.faiss_index else "")
              + f"; {manifest['rows_embedded_here']} rows embedded in this run in {manifest['seconds']:.2f} s "
              f"({manifest['rows_embedded_here'] / max(manifest['seconds'], 1e-9):.1f} rows/s over "
              f"{sharding.world()[1]} process(es))", flush=True)
        if manifest["num_skipped"]:
            print(f"gcl-embed: skipped {manifest['num_skipped']} bad row(s) (--skip_bad_samples), e.g.:", flush=True)
            for message in manifest["skipped_examples"][:5]:
                print(f"  {message}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `gcl-embed`; data and job mistakes end in one line and exit status 1."""
    try:
        run(sys.argv[1:] if argv is None else argv)
        sharding.destroy()
    except (EmbedError, DataError, BadSampleError, OutputDirInUseError) as error:
        if sharding.launcher_rank() == 0:
            print(f"gcl-embed: {_one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except SystemExit as stop:
        if isinstance(stop.code, str) and sharding.launcher_rank() != 0:
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()
