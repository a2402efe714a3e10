# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Atomic outputs: whatever a crash interrupts, a path either holds the old complete output, the new complete output,
or nothing that loads — never a half-written model, checkpoint or report.

Everything is written under a hidden staging name in the same folder (so the final `os.replace` is a rename on one
file system) and published by rename. Directories that `from_pretrained` reads are recognised by a marker file
(`config.json`, `adapter_config.json`); it is removed first and published last, so a folder caught midway has no
marker and fails to load instead of loading mixed weights.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Files whose presence makes a folder look like a loadable model / adapter / checkpoint.
MARKER_FILES = ("config.json", "adapter_config.json", "trainer_state.json")
STAGING_PREFIX = ".gcl-staging-"


def _fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or folder to disk (best effort: some file systems refuse to fsync folders)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync_tree(root: str | os.PathLike) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_path(folder)


def _current_umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(temporary_path)` on a temporary file beside `path`, then move it into place with `os.replace`:
    readers see the old file or the whole new one, never a half-written one. The file gets the usual permissions
    (`mkstemp` would leave it private to the owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())
        write(temporary)
        _fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_path(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding=encoding))


def atomic_write_json(path: str | os.PathLike, data, **dump_kwargs) -> Path:
    """`json.dumps` `data` (indent 2 unless given) to `path` atomically."""
    dump_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **dump_kwargs) + "\n")


@contextlib.contextmanager
def staged_directory(final_dir: str | os.PathLike):
    """Yield an empty staging folder; when the block succeeds it replaces `final_dir` as a whole.

    An existing `final_dir` is moved aside and deleted only after the new one is in place, so a crash at any moment
    leaves either the old folder, the new one, or the old one under a hidden `.gcl-staging-*` name. When the block
    raises, the staging folder is removed and `final_dir` is untouched.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final_dir.name}-", dir=final_dir.parent))
    os.chmod(staging, 0o777 & ~_current_umask())  # `mkdtemp` makes it private to its owner; publish a usual folder
    try:
        yield staging
        publish_directory(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once published; removed if the block raised


def publish_directory(staged: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Rename the complete folder `staged` to `final_dir` (same file system). An existing `final_dir` is moved aside
    and deleted only after the new one is in place, so a crash at any moment leaves the old folder, the new one, or the
    old one under a hidden `.gcl-staging-*` name; if the rename fails, the old folder is put back."""
    final_dir = Path(final_dir)
    _fsync_tree(staged)
    previous = None
    try:
        if final_dir.exists():
            previous = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-{final_dir.name}-", dir=final_dir.parent))
            os.rmdir(previous)
            os.replace(final_dir, previous)
        os.replace(staged, final_dir)
        _fsync_path(final_dir.parent)
    except BaseException:
        if previous is not None and not final_dir.exists():  # put the old output back
            os.replace(previous, final_dir)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def staged_files(output_dir: str | os.PathLike, markers: tuple[str, ...] = MARKER_FILES):
    """Yield a staging folder whose files are then moved into `output_dir`, which may hold other things that must
    stay (checkpoints, reports): marker files already in `output_dir` are removed first and the new ones are moved
    last, so at no moment does `output_dir` load as a model made of old and new files."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}files-", dir=output_dir))
    try:
        yield staging
        _fsync_tree(staging)
        entries = sorted(staging.iterdir(), key=lambda entry: entry.name in markers)
        for marker in markers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output_dir / marker)
        _fsync_path(output_dir)
        for entry in entries:
            target = output_dir / entry.name
            if entry.is_dir():  # e.g. a sub-folder the saver made: replace it as a whole
                if target.exists():
                    shutil.rmtree(target)
            os.replace(entry, target)
        _fsync_path(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(folder: str | os.PathLike) -> list[str]:
    """Delete `.gcl-staging-*` leftovers of saves a crash interrupted; returns what was removed."""
    removed = []
    for entry in Path(folder).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(str(entry))
    return removed
