# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Reading benchmark files with errors that name the file and line; nothing is dropped silently."""

import os
from collections.abc import Iterator

from ..data import textfiles


class EvaluationDataError(ValueError):
    """Benchmark data that cannot be used as given; the message names the file and the line or ids."""


def read_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)` of a UTF-8 text file; invalid UTF-8 raises, naming the line."""
    return textfiles.read_text_lines(path, EvaluationDataError)


def read_text(path: str | os.PathLike) -> str:
    """The whole UTF-8 text of a file (for CSV readers); invalid UTF-8 raises, naming the line."""
    return "".join(line for _, line in read_text_lines(path))


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line; a line that is not a JSON object raises."""
    return textfiles.read_jsonl_objects(path, EvaluationDataError)


def resolve_image(value, root: str | os.PathLike, where: str, check: bool = True) -> str | None:
    """An image path relative to `root` (or absolute) that exists; `None`/`""` gives `None`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EvaluationDataError(f"{where}: image path is a {type(value).__name__}, expected a string.")
    path = value if os.path.isabs(value) else os.path.normpath(os.path.join(root, value))
    if check and not os.path.isfile(path):
        raise EvaluationDataError(f"{where}: image file not found: {path}")
    return path


def optional_text(value, where: str, field: str) -> str | None:
    """A text field: a non-empty string, or `None` for null / empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvaluationDataError(f"{where}: {field} is a {type(value).__name__}, expected a string or null.")
    value = value.strip()
    return value or None
