# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Line-by-line readers of UTF-8 text and JSONL files whose errors name the file and line. Training data and
benchmark readers share them, each raising its own error class."""

import json
import os
from collections.abc import Iterator
from pathlib import Path


def read_text_lines(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)`; a missing file or invalid UTF-8 raises `error`, naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file.")
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as decode_error:
                raise error(
                    f"{path}:{line_number}: not valid UTF-8 "
                    f"(byte {raw[decode_error.start]:#04x} at column {decode_error.start + 1})."
                ) from None


def read_jsonl_objects(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, dict)` for each non-blank line; invalid UTF-8, invalid JSON or a line that is not a JSON
    object raises `error`, naming the file and line."""
    for line_number, line in read_text_lines(path, error):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as decode_error:
            raise error(f"{path}:{line_number}: not valid JSON ({decode_error.msg}).") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}.")
        yield line_number, row
