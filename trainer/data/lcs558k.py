# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""LCS-558K, the GCL paper's training data: LLaVA-Pretrain's `blip_laion_cc_sbu_558k.json`, one JSON list of

    {"id": "004539375", "image": "00453/004539375.jpg",
     "conversations": [{"from": "human", "value": "Render a clear and concise summary of the photo.\\n<image>"},
                       {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]}

with the images in a folder (LLaVA ships them as `images.zip`). The caption is the first "gpt" turn. Read as a
`datasets.Dataset` or, streaming, as a `datasets.IterableDataset` that parses the list incrementally."""

import codecs
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
from huggingface_hub import hf_hub_download

from .errors import DataError
from .rows import ROW_INDEX_KEY

logger = logging.getLogger(__name__)

LCS558K_REPO_ID = "liuhaotian/LLaVA-Pretrain"
LCS558K_FILENAME = "blip_laion_cc_sbu_558k.json"
IMAGE_TOKEN = "<image>"

# Bytes read from the file at a time. One LCS-558K element is ~300 bytes, the file ~180 MB.
DEFAULT_CHUNK_SIZE = 1 << 20
# An element that still does not parse once this much text is buffered is reported as invalid rather than read on.
MAX_ELEMENT_CHARS = 64 << 20
# How much of a file `sniff_lcs558k` reads: enough for the first element, never the whole file.
SNIFF_BYTES = 64 << 10
# A JSON error this far before the end of the buffer is a real error, not an element cut off by the chunk boundary.
_CUT_OFF_MARGIN = 64
_NON_WHITESPACE = re.compile(r"[^ \t\n\r]")  # JSON's whitespace is exactly these four
_IMAGE_TOKEN_PATTERN = re.compile(r"\s*" + re.escape(IMAGE_TOKEN) + r"\s*")
# Bad-row messages kept for the end-of-loading warning (the count covers all of them).
_EXAMPLES_SHOWN = 5


def _read_json_array_objects(stream, name: str, chunk_size: int) -> Iterator[tuple[int, dict]]:
    """The incremental reader behind `read_json_array_objects`, over any binary stream with `.read(n)`."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    scanner = json.JSONDecoder()
    state = {"buffer": "", "pos": 0, "base": 0, "read": 0, "eof": False}  # base: byte offset of buffer[0]

    def offset(position: int) -> int:  # byte offset in the file of a position in the buffer
        return state["base"] + len(state["buffer"][:position].encode("utf-8"))

    def fill() -> bool:
        """Append the next chunk, dropping the consumed text first; False at the end of the file."""
        if state["eof"]:
            return False
        raw = stream.read(chunk_size)
        pending = len(decoder.getstate()[0])  # bytes of a character split by the previous chunk boundary
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as error:
            at = state["read"] - pending + error.start
            bad = error.object[error.start]
            raise DataError(f"{name}: not valid UTF-8 (byte {bad:#04x} at byte offset {at}).") from None
        consumed = state["buffer"][: state["pos"]]
        state["base"] += len(consumed.encode("utf-8"))
        state["buffer"] = state["buffer"][state["pos"]:] + text
        state["pos"] = 0
        state["read"] += len(raw)
        state["eof"] = not raw
        return bool(raw)

    def next_char() -> str | None:
        """Move to the next non-whitespace character and return it (None at the end of the file)."""
        while True:
            match = _NON_WHITESPACE.search(state["buffer"], state["pos"])
            if match:
                state["pos"] = match.start()
                return state["buffer"][state["pos"]]
            state["pos"] = len(state["buffer"])
            if not fill():
                return None

    fill()
    if state["buffer"].startswith("\ufeff"):  # a UTF-8 byte-order mark, as some editors write
        state["pos"] = 1
    char = next_char()
    if char is None:
        raise DataError(f"{name}: empty file; expected a JSON list of objects.")
    if char != "[":
        hint = " (one object per line is JSONL: name the file .jsonl)" if char == "{" else ""
        raise DataError(
            f"{name}: not a JSON list: expected '[' but the file starts with {char!r} at byte {offset(state['pos'])}"
            f"{hint}."
        )
    state["pos"] += 1
    index = 0
    char = next_char()
    if char == "]":
        state["pos"] += 1
    while char != "]":
        if char is None:
            raise DataError(f"{name}: ends inside the list, before element {index} (a truncated file?).")
        start = state["pos"]
        while True:  # parse one element, reading more of the file while it is cut off by the chunk boundary
            buffer = state["buffer"]
            try:
                element, end = scanner.raw_decode(buffer, state["pos"])
            except json.JSONDecodeError as error:
                cut_off = error.msg.startswith("Unterminated string") or error.pos >= len(buffer) - _CUT_OFF_MARGIN
                into_element = error.pos - state["pos"]  # fill() moves the buffer; the element start stays at pos
                if cut_off and not state["eof"] and len(buffer) - state["pos"] <= MAX_ELEMENT_CHARS and fill():
                    continue
                if char == ",":
                    where = f"element {index} (byte {offset(state['pos'])})"
                    raise DataError(f"{name}: {where}: an empty element (',').") from None
                raise DataError(
                    f"{name}: element {index} (byte {offset(state['pos'])}): not valid JSON ({error.msg} at byte "
                    f"{offset(state['pos'] + into_element)})."
                ) from None
            if end >= len(buffer) and not state["eof"]:  # a number or literal may go on in the next chunk
                fill()
                continue
            break
        if not isinstance(element, dict):
            raise DataError(
                f"{name}: element {index} (byte {offset(start)}): expected a JSON object, got {type(element).__name__}."
            )
        state["pos"] = end
        yield index, element
        index += 1
        char = next_char()
        if char == ",":
            state["pos"] += 1
            char = next_char()
            if char == "]":
                raise DataError(f"{name}: element {index} (byte {offset(state['pos'])}): a trailing comma before ']'.")
        elif char == "]":
            state["pos"] += 1
        elif char is None:
            raise DataError(
                f"{name}: ends after element {index - 1} without closing the list with ']' (a truncated file?)."
            )
        else:
            raise DataError(
                f"{name}: byte {offset(state['pos'])}: expected ',' or ']' after element {index - 1}, got {char!r}."
            )
    if next_char() is not None:
        raise DataError(f"{name}: byte {offset(state['pos'])}: data after the list's closing ']'.")


def read_json_array_objects(
    path: str | os.PathLike, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[int, dict]]:
    r"""
    Read a file holding one JSON list of objects incrementally, without loading it whole.

    Args:
        path (`str` or `os.PathLike`): the file.
        chunk_size (`int`, defaults to 1 MiB): bytes read at a time; memory holds about one chunk plus one element.

    Returns:
        An iterator of `(index, dict)`, the element's position in the list and the element. Invalid UTF-8, invalid
        JSON, a file that is not a list, an element that is not an object, a truncated file or data after the list
        raise `DataError` naming the file and the element index and/or byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    with open(path, "rb") as stream:
        yield from _read_json_array_objects(stream, str(path), chunk_size)


def sniff_lcs558k(path: str | os.PathLike, max_bytes: int = SNIFF_BYTES) -> str | None:
    """Whether a file looks like LCS-558K, from its first `max_bytes` only: returns `None` if it is a JSON list whose
    first element is an object with `conversations`, otherwise a short reason why not."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(max_bytes)
        first = next(_read_json_array_objects(io.BytesIO(head), str(path), chunk_size=max_bytes), None)
    except DataError as error:
        return f"its first {max_bytes // 1024} KiB do not start a JSON list of objects ({error})"
    except OSError as error:
        return f"it cannot be read ({error})"
    if first is None:
        return "it is an empty list"
    if "conversations" not in first[1]:
        return f"its first element has no `conversations` (keys {sorted(first[1])[:8]})"
    return None


def is_lcs558k_file(path: str | os.PathLike) -> bool:
    """True if `path` is a file whose first few KB look like LCS-558K (see `sniff_lcs558k`)."""
    return Path(path).is_file() and sniff_lcs558k(path) is None


def strip_image_token(caption: str) -> str:
    """Remove LLaVA's `<image>` placeholder (and the whitespace around it) from a caption; a caption without it is
    returned unchanged."""
    if IMAGE_TOKEN not in caption:
        return caption
    return _IMAGE_TOKEN_PATTERN.sub(" ", caption).strip()


def lcs558k_row(element: dict, index: int, image_root: str, source: str = "") -> dict:
    r"""
    Turn one element of the LCS-558K list into an image–caption row.

    Args:
        element (`dict`): `{"id", "image", "conversations": [{"from", "value"}, ...]}`.
        index (`int`): its position in the list, kept as `gcl_row_index`.
        image_root (`str`): the folder that the relative `image` path is resolved against.
        source (`str`): the file's name, for error messages.

    Returns:
        `{"image": absolute path, "caption": the first "gpt" turn's value without <image>, "id": str or None,
        "gcl_row_index": index}`. A row without an image path or a gpt turn, or with a non-string or empty caption,
        raises `DataError` naming the file, the row index and its id.
    """
    row_id = element.get("id")
    row_id = None if row_id is None else str(row_id)

    def bad(problem: str) -> DataError:
        return DataError(f"{source}: row {index} (id {row_id!r}): {problem}")

    image = element.get("image")
    if image is None:
        raise bad("has no `image` (a path relative to the image folder).")
    if not isinstance(image, str) or not image:
        raise bad(f"`image` is {image!r}, expected a non-empty path string.")
    conversations = element.get("conversations")
    turns = conversations if isinstance(conversations, list) else []
    answer = next((turn for turn in turns if isinstance(turn, dict) and turn.get("from") == "gpt"), None)
    if answer is None:
        found = "no `conversations` list" if not isinstance(conversations, list) else "no turn from \"gpt\""
        raise bad(f"has {found}, so no caption.")
    caption = answer.get("value")
    if not isinstance(caption, str):
        raise bad(f"the caption (the first \"gpt\" turn's `value`) is a {type(caption).__name__}, expected a string.")
    caption = strip_image_token(caption)
    if not caption.strip():
        raise bad("the caption (the first \"gpt\" turn's `value`) is empty.")
    return {
        "image": image if os.path.isabs(image) else os.path.join(image_root, image),
        "caption": caption,
        "id": row_id,
        ROW_INDEX_KEY: index,
    }


def iter_lcs558k_rows(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    image_column: str = "image",
    caption_column: str = "caption",
) -> Iterator[dict]:
    r"""
    Yield the image–caption rows of an LCS-558K file, reading it incrementally.

    Args:
        path (`str` or `os.PathLike`): the `blip_laion_cc_sbu_558k.json` file.
        image_root (`str`, *optional*): folder of the images (the extracted `images.zip`); default the file's folder.
        skip_bad_rows (`bool`, defaults to `False`): skip a row without an image path or a caption instead of raising;
            skipped rows are counted and reported, with a few examples, in a warning once the file is read to its
            end. A file that is not valid JSON raises either way.
        chunk_size (`int`): bytes read at a time.
        image_column, caption_column (`str`): extra names the image path and caption are also given under, when
            they are not `image` / `caption`.

    Returns:
        An iterator of `{"image", "caption", "id", "gcl_row_index"}` rows (plus `image_column`/`caption_column`);
        `gcl_row_index` is the element's position in the JSON list, so later errors name the row of the file.
    """
    path = Path(path)
    root = os.path.abspath(os.path.expanduser(str(image_root if image_root is not None else path.parent)))
    yield from _pairs_from_elements(read_json_array_objects(path, chunk_size), root, str(path), skip_bad_rows,
                                    image_column, caption_column)


def _pairs_from_elements(elements, root: str, source: str, skip_bad_rows: bool, image_column: str,
                         caption_column: str) -> Iterator[dict]:
    """`(index, element)` pairs -> image–caption rows, with the bad-row policy (raise, or skip, count and report)."""
    skipped, examples = 0, []
    for index, element in elements:
        try:
            row = lcs558k_row(element, index, root, source)
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped += 1
            if len(examples) < _EXAMPLES_SHOWN:
                examples.append(str(error))
            continue
        if image_column != "image":
            row[image_column] = row["image"]
        if caption_column != "caption":
            row[caption_column] = row["caption"]
        yield row
    if skipped:
        logger.warning(
            "%s: skipped %d bad row(s) (skip_bad_rows), e.g.:\n  %s", source, skipped, "\n  ".join(examples)
        )


def _generate_pairs_from_dataset(dataset, **kwargs) -> Iterator[dict]:
    yield from _pairs_from_elements(enumerate(dataset), **kwargs)


def lcs558k_pairs(
    dataset: "datasets.Dataset | datasets.IterableDataset",
    image_root: str | os.PathLike,
    image_column: str = "image",
    caption_column: str = "caption",
    skip_bad_rows: bool = False,
) -> "datasets.Dataset | datasets.IterableDataset":
    r"""
    Image–caption pairs from LCS-558K rows already loaded with `datasets`, e.g.
    `load_dataset("liuhaotian/LLaVA-Pretrain", data_files="blip_laion_cc_sbu_558k.json", split="train")` (add
    `streaming=True` to stream). `load_lcs558k` reads the same file itself, incrementally and with byte offsets in its
    errors; this is for data that is already a `datasets` object (a mirror, a subset, a mix).

    Args:
        dataset: rows with `id`, `image` and `conversations`; a map-style dataset gives a `datasets.Dataset`, an
            `IterableDataset` a stream.
        image_root (`str`): the folder of the extracted `images.zip`.
        image_column, caption_column, skip_bad_rows: as in `load_lcs558k`; a row's index is its position in
            `dataset`, which error messages name.

    Returns:
        The columns of `load_lcs558k`.
    """
    root = os.path.abspath(os.path.expanduser(str(image_root)))
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "a datasets object"
    kwargs = dict(root=root, source=f"LCS-558K rows of {name}", skip_bad_rows=skip_bad_rows,
                  image_column=image_column, caption_column=caption_column)
    features = _features(image_column, caption_column)
    if isinstance(dataset, datasets.IterableDataset):
        return datasets.IterableDataset.from_generator(_generate_pairs_from_dataset, features=features,
                                                       gen_kwargs=dict(dataset=dataset, **kwargs))
    return _collect(_pairs_from_elements(enumerate(dataset), **kwargs), features, kwargs["source"], skip_bad_rows)


def _collect(rows, features: "datasets.Features", source: str, skip_bad_rows: bool) -> datasets.Dataset:
    columns = {name: [] for name in features}
    for row in rows:
        for name, values in columns.items():
            values.append(row[name])
    if not columns[ROW_INDEX_KEY]:
        raise DataError(f"{source}: no rows" + (" left after skipping bad rows." if skip_bad_rows else "."))
    # Columns, not a list of dicts: 558k rows become Arrow arrays without a per-row schema check.
    return datasets.Dataset.from_dict(columns, features=features)


def _generate_rows(**kwargs) -> Iterator[dict]:
    # A module-level generator, so the stream pickles into dataloader workers.
    yield from iter_lcs558k_rows(**kwargs)


def _features(image_column: str, caption_column: str) -> datasets.Features:
    columns = {"image": datasets.Value("string"), "caption": datasets.Value("string"), "id": datasets.Value("string")}
    columns[image_column] = datasets.Value("string")
    columns[caption_column] = datasets.Value("string")
    columns[ROW_INDEX_KEY] = datasets.Value("int64")
    return datasets.Features(columns)


def _looks_like_local_path(name: str) -> bool:
    # A Hub id is `name` or `org/name`; anything written like a path or file name is meant to be local.
    return name.startswith((".", "/", "~")) or name.endswith((".json", ".jsonl"))


def resolve_lcs558k_file(
    train_data: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    filename: str = LCS558K_FILENAME,
    revision: str | None = None,
) -> tuple[Path, str]:
    r"""
    Find the LCS-558K JSON file and its image folder.

    Args:
        train_data (`str` or `os.PathLike`): the JSON file, a folder holding `filename`, or a Hub dataset repository
            (such as `liuhaotian/LLaVA-Pretrain`) to download `filename` from.
        image_root (`str`, *optional*): the image folder. Default: the JSON file's folder; required for the Hub,
            which ships the images as `images.zip` for the user to download and extract.
        filename (`str`): the JSON file's name in a folder or repository.
        revision (`str`, *optional*): the repository revision (Hub only).

    Returns:
        `(json_path, image_root)`. Raises `DataError` for a missing file or image folder.
    """
    path = Path(os.path.expanduser(str(train_data)))
    root = Path(os.path.expanduser(str(image_root))) if image_root is not None else None
    if root is not None and not root.is_dir():
        raise DataError(f"{root}: the image folder (image_root) does not exist or is not a folder.")
    if path.is_dir():
        path = path / filename
        if not path.is_file():
            raise DataError(f"{path.parent}: no {filename} in this folder.")
    elif not path.is_file():
        if _looks_like_local_path(str(train_data)):
            raise DataError(f"{train_data}: no such file or directory.")
        if image_root is None:
            raise DataError(
                f"{train_data}: LCS-558K from the Hub needs image_root (--image_root): the folder where you extracted "
                f"the repository's images.zip (e.g. `hf download {train_data} images.zip --repo-type dataset "
                "--local-dir DIR` and unzip it there). Only the JSON file is downloaded."
            )
        try:
            path = Path(hf_hub_download(str(train_data), filename, repo_type="dataset", revision=revision))
        except Exception as error:  # offline, unknown repository, no such file, ...
            raise DataError(
                f"{train_data}: cannot download {filename} from the Hub ({type(error).__name__}: {error})."
            ) from error
    return path, os.path.abspath(root if root is not None else path.parent)


def load_lcs558k(
    train_data: str | os.PathLike = LCS558K_REPO_ID,
    image_root: str | os.PathLike | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    streaming: bool = False,
    skip_bad_rows: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    filename: str = LCS558K_FILENAME,
    revision: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""
    Load LCS-558K (or any file in its format) as image–caption pairs.

    Args:
        train_data (`str` or `os.PathLike`, defaults to `liuhaotian/LLaVA-Pretrain`): the JSON file, a folder holding
            it, or a Hub dataset repository to download it from (see `resolve_lcs558k_file`).
        image_root (`str`, *optional*): the folder of the extracted `images.zip`; default the JSON file's folder,
            required for the Hub. Image files are not checked here: the collator names a missing or bad one lazily.
        image_column, caption_column (`str`): the image path and caption are also copied under these names when
            they are not `image` / `caption`.
        streaming (`bool`, defaults to `False`): return a `datasets.IterableDataset` that parses the JSON list
            incrementally (memory: one chunk), instead of parsing it once into an in-memory `datasets.Dataset`.
        skip_bad_rows (`bool`, defaults to `False`): skip (and count, and report in a warning at the end of
            loading, or when a stream is exhausted) rows without an image path or caption, instead of raising.
        chunk_size (`int`, defaults to 1 MiB): bytes read from the file at a time.
        filename (`str`): the JSON file's name in a folder or Hub repository.
        revision (`str`, *optional*): Hub revision.

    Returns:
        A dataset with the string columns `image` (absolute path), `caption`, `id` and the int column
        `gcl_row_index` (the element's position in the JSON list).
    """
    path, root = resolve_lcs558k_file(train_data, image_root, filename, revision)
    kwargs = dict(path=str(path), image_root=root, skip_bad_rows=skip_bad_rows, chunk_size=chunk_size,
                  image_column=image_column, caption_column=caption_column)
    features = _features(image_column, caption_column)
    if streaming:
        return datasets.IterableDataset.from_generator(_generate_rows, features=features, gen_kwargs=kwargs)
    return _collect(iter_lcs558k_rows(**kwargs), features, str(path), skip_bad_rows)
