# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Atomic outputs: whatever a crash interrupts, a path either holds the old complete output, the new complete output,
or nothing that loads — never a half-written model, checkpoint or report.

Everything is written under a hidden staging name in the same folder (so the final `os.replace` is a rename on one
file system) and published by rename. Directories that `from_pretrained` reads are recognised by a marker file
(`config.json`, `adapter_config.json`); it is removed first and published last, so a folder caught midway has no
marker and fails to load instead of loading mixed weights.
"""

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the pid in the lock file decides
    fcntl = None

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
    """Flush a staged tree and give it the usual permissions: some writers (safetensors, `mkstemp`) leave files
    private to their owner (0600), unlike every other file of a published folder."""
    file_mode, folder_mode = 0o666 & ~_current_umask(), 0o777 & ~_current_umask()
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
            _fsync_path(path)
        os.chmod(folder, folder_mode)
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
    """Delete `.gcl-staging-*` leftovers of saves a crash interrupted; returns what was removed.

    Nothing is touched while another live process holds the folder's run lock (see `output_dir_lock`): its staging
    folders are saves in progress, not leftovers."""
    if output_dir_in_use(folder) is not None:
        return []
    removed = []
    for entry in Path(folder).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(str(entry))
    return removed


# --- one live run per output folder -------------------------------------------------------------------------------

LOCK_FILE = ".gcl-run.lock"
_held_locks: dict[str, list] = {}  # resolved folder -> [descriptor, nesting depth] for the locks this process holds


class OutputDirInUseError(RuntimeError):
    """Another live run holds the output folder's lock."""


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """What `folder`'s lock file says about its writer (`{"pid", "host", "started"}`), or `None` without one."""
    try:
        holder = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_is_live(holder: dict) -> bool:
    """Whether the pid in a lock file still runs. On another host it cannot be checked: count it as live."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _try_lock(descriptor: int) -> bool | None:
    """`flock` the file without waiting: True when taken, False when another process holds it, None when the file
    system has no locks (then the pid in the file decides)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}"


def output_dir_in_use(folder: str | os.PathLike) -> dict | None:
    """The lock record of a live run *other than this process* holding `folder`, else `None`."""
    folder = Path(folder)
    if str(folder.resolve()) in _held_locks:
        return None
    try:
        descriptor = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        taken = _try_lock(descriptor)
        holder = lock_holder(folder) or {}
        live = (not taken) if taken is not None else _pid_is_live(holder)
    finally:
        os.close(descriptor)  # also drops a lock taken just to look
    return holder if live else None


@contextlib.contextmanager
def output_dir_lock(folder: str | os.PathLike):
    """Hold `folder/.gcl-run.lock` for the block, so a second run into the same output folder stops at once instead of
    deleting the first run's staging folders and overwriting its checkpoints.

    The lock is an `flock` on the file, which the kernel drops when its process dies: a crashed run never leaves it
    stuck. The file names the holder (pid, host, start time) for the error message; on a file system without locks
    the pid decides (a dead pid on this host is stale and taken over; one on another host cannot be checked and is
    respected). Re-entrant within one process (gcl-train holds it around `GCLTrainer.train`, which takes it too).

    Raises:
        OutputDirInUseError: a live run holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    path = folder / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_current_umask())
        taken = _try_lock(descriptor)
        holder = lock_holder(folder) or {}
        if taken is False or (taken is None and holder and _pid_is_live(holder) and holder.get("pid") != os.getpid()):
            os.close(descriptor)
            extra = f" (if that run is gone, delete {path})" if taken is None else ""
            raise OutputDirInUseError(f"{folder} is in use by another run ({_describe(holder)}); wait for it to finish "
                                      f"or choose another --output_dir{extra}.")
        try:  # the holder may have removed the file between our open and lock: lock the file that is there now
            same_file = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    os.ftruncate(descriptor, 0)
    os.write(descriptor, json.dumps(record).encode())
    _held_locks[key] = [descriptor, 1]
    try:
        yield
    finally:
        del _held_locks[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # removed while still locked, so no other run can lock the old file meanwhile
        os.close(descriptor)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` reports a full disk or exhausted quota (directly, or as the cause of a writer's error)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False
