# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Shared pieces of the checkpoint converters: layout checks with clear errors and an atomic output directory."""

import os
import re
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from ..atomic import staged_directory


class ConversionError(ValueError):
    """A checkpoint does not have the layout the converter expects (unknown, missing or mis-shaped tensors)."""


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_layout(
    source: Mapping[str, torch.Tensor],
    key_map: Mapping[str, str],
    target_shapes: Mapping[str, tuple[int, ...]],
    ignored: Iterable[str] = (),
    checkpoint_name: str = "checkpoint",
) -> None:
    r"""
    Check that every tensor of `source` is either mapped (`key_map`: source name -> target name) or explicitly
    `ignored` (regular expressions, matched in full), that every mapped source tensor is present, and that each has the
    shape of its target (`target_shapes`). Raises one [`ConversionError`] naming every offending tensor.
    """
    ignored = [re.compile(pattern) for pattern in ignored]
    unknown = [name for name in source if name not in key_map and not any(p.fullmatch(name) for p in ignored)]
    missing = [name for name in key_map if name not in source]
    misshaped = [
        f"{name} {tuple(source[name].shape)} (expected {tuple(target_shapes[target])} for {target})"
        for name, target in key_map.items()
        if name in source and tuple(source[name].shape) != tuple(target_shapes[target])
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown tensor(s), neither converted nor known to be unused: {_listing(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensor(s) with the wrong shape: {_listing(misshaped, 10)}")
    if problems:
        raise ConversionError(f"{checkpoint_name} does not have the expected layout:\n- " + "\n- ".join(problems))


@contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `output_dir`; on success it replaces `output_dir` (an existing one only with
    `overwrite`), on failure it is removed, so `output_dir` is never left half-written."""
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")
    with staged_directory(output_dir) as staging:
        yield staging


def meta_state_shapes(build) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of the module `build()` makes, built on the meta device (no memory)."""
    with torch.device("meta"):
        module = build()
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
