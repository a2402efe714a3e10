# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Keep local paths out of what is published.

A run records where it read and wrote (`--train_data /home/alice/private_data`, `--output_dir /home/alice/runs/r1`,
`gcl-eval`'s model path). A Hub repository must carry none of that: a local path is published as its folder name
(`private_data`), and the user's home directory never appears. `LocalPathRedactor` rewrites the JSON records and the
Markdown reports an export copies; the card names local data and models with `public_name`.
"""

import json
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Any

# Strings that are local paths: absolute (POSIX or Windows), home-relative, or explicitly relative.
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")
_RELATIVE_PREFIXES = ("./", "../", ".\\", "..\\")


def is_local_path(value: Any) -> bool:
    """Whether a string names a local file or folder rather than a Hub id, URL or plain text."""
    if not isinstance(value, str) or not value or "\n" in value or "://" in value:
        return False
    return (value.startswith(("/", "~", *_RELATIVE_PREFIXES)) or bool(_WINDOWS_ABSOLUTE.match(value))
            or value.startswith("\\\\"))


def public_name(path: str) -> str:
    """What may be published of a local path: its last component (`/home/alice/private_data/` -> `private_data`)."""
    stripped = path.rstrip("/\\")
    name = PureWindowsPath(stripped).name if ("\\" in stripped or _WINDOWS_ABSOLUTE.match(stripped)) else Path(stripped).name
    return name if name not in ("", ".", "..", "~") else "local"


class LocalPathRedactor:
    r"""
    Replaces local paths by their folder names in JSON values and text.

    Every local path met in a JSON value (`redact_json`) is remembered, so the same path inside a Markdown report
    (`redact_text`) is replaced too; `known_paths` adds paths up front (the run directory). Whatever still starts with
    the home directory afterwards is replaced by its last component as well.
    """

    def __init__(self, known_paths=(), home: str | None = None):
        self._paths: dict[str, str] = {}
        self.home = home if home is not None else os.path.expanduser("~")
        for path in known_paths:
            self.add(str(path))

    def add(self, path: str) -> None:
        if not is_local_path(path):
            return
        name = public_name(path)
        variants = {path, path.rstrip("/\\")}
        for variant in list(variants):
            try:
                variants.add(str(Path(os.path.expanduser(variant)).resolve()))
            except (OSError, RuntimeError):
                pass
        for variant in variants:
            if len(variant) > 1:  # never "/" alone
                self._paths[variant] = name

    def redact_text(self, text: str) -> str:
        for path in sorted(self._paths, key=len, reverse=True):  # longest first: a run directory before its parent
            text = text.replace(path, self._paths[path])
        if self.home and self.home not in ("/", ""):
            pattern = re.escape(self.home.rstrip("/")) + r"(?:/[^\s\"'`<>()\[\]|,]*)?"
            text = re.sub(pattern, lambda match: public_name(match.group(0)), text)
        return text

    def redact_json(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: self.redact_json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact_json(item) for item in value]
        if isinstance(value, str):
            if is_local_path(value):
                self.add(value)
                return public_name(value)
            return self.redact_text(value)
        return value

    def collect(self, value: Any) -> None:
        """Remember the local paths in a JSON value without rewriting it (so text files seen first are covered)."""
        if isinstance(value, dict):
            for item in value.values():
                self.collect(item)
        elif isinstance(value, list):
            for item in value:
                self.collect(item)
        elif is_local_path(value):
            self.add(value)

    def redact_file(self, path: Path) -> None:
        """Rewrite a copied `.json` or text file in place (other files are left alone)."""
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                path.write_text(self.redact_text(path.read_text(encoding="utf-8", errors="replace")), encoding="utf-8")
                return
            path.write_text(json.dumps(self.redact_json(data), indent=2, allow_nan=True) + "\n", encoding="utf-8")
        elif path.suffix in (".md", ".txt", ".tsv", ".csv"):
            path.write_text(self.redact_text(path.read_text(encoding="utf-8")), encoding="utf-8")


# The keys under which transformers (and peft, for an adapter's base) record where something was loaded from
# (sub-configs keep theirs when saved, e.g. a VISTA text encoder loaded from a local folder).
NAME_OR_PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path")


def redact_name_or_path(path: Path) -> None:
    """Rewrite a saved `config.json`-like file so no `_name_or_path` entry (at any depth) holds a local path; only those
    keys are touched (a tokenizer's vocabulary may hold strings that look like paths)."""

    def walk(value):
        if isinstance(value, dict):
            return {key: (public_name(item) if key in NAME_OR_PATH_KEYS and is_local_path(item) else walk(item))
                    for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    data = json.loads(path.read_text(encoding="utf-8"))
    redacted = walk(data)
    if redacted != data:
        path.write_text(json.dumps(redacted, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["NAME_OR_PATH_KEYS", "LocalPathRedactor", "is_local_path", "public_name", "redact_name_or_path"]
