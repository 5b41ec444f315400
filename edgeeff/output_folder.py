"""The output folder: written whole or not at all, never lost to a concurrent run or a full disk.

A compile writes into a hidden `.NAME.partial-PID` beside the final folder and renames it into
place only when everything is written (a killed run leaves only that hidden partial, which the
next run removes once its process is gone). Around that:

- **One run per folder.** A run holds an exclusive lock (`fcntl.flock` on `.NAME.lock`, holding
  the holder's pid) from before its first check to after its rename. A second run into the same
  folder stops at once with one line naming the other run's process; the kernel drops the lock
  of a killed process, so a stale lock never blocks. A folder that appears by other means while
  a run works is not replaced without `--force` (the rename itself refuses a non-empty target).
- **`--force` swaps atomically.** The new folder and the old one are exchanged in one
  `renameat2(RENAME_EXCHANGE)` (Linux 3.15+), then the old one is removed: a reader never sees
  no folder. Where the exchange is not supported, two renames.
- **Disk full, read-only, no permission** while writing: one line naming the path, the space
  free and the space the compile needs, exit 2, the partial folder removed.

`EDGEEFF_FAULT_KILL_AT=<point>` makes the process SIGKILL itself at that point (a stage name, or
`publish` just before the rename): the fault-injection tests (tests/test_reliability.py) use it
to kill a compile at a chosen moment instead of guessing with timers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import tempfile
from pathlib import Path

from .errors import UserError

FAULT_ENV = "EDGEEFF_FAULT_KILL_AT"
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)
ACCESS_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)
RENAME_EXCHANGE = 2  # linux/fs.h
LOW_SPACE_BYTES = 1 << 20  # less free than this after a runtime's error: the disk was the cause


def kill_point(name: str) -> None:
    """SIGKILL this process here if the fault-injection variable names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def check_out_folder(out: Path) -> None:
    """--out must be a folder edgeeff can create and write in. Tried for real before any heavy work
    (permissions alone do not tell: root may "write" to /proc, where mkdir still fails): the missing
    folders are created, a file is written in the last one, and all of it is removed again, so a
    compile that fails later leaves nothing behind."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise UserError(f"--out {out}: {where}, not a folder; choose another --out")
    created = []
    try:
        for folder in reversed([out, *out.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        with tempfile.TemporaryFile(dir=out, prefix=".edgeeff-write-check-"):
            pass
    except OSError as err:
        raise UserError(f"--out {out}: cannot create or write a folder there ({err.strerror or err}); "
                        f"choose another --out") from None
    finally:
        for folder in reversed(created):
            folder.rmdir()


@contextlib.contextmanager
def claim(final: Path):
    """Hold the folder's lock for the block, or fail at once naming the run that holds it."""
    lock_path = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"--out: another edgeeff run (process {holder}) is writing {final}; wait for it "
                            f"to finish or choose another --out") from None
        # The holder before us may have removed the file after we opened it: then our lock is on
        # a file nobody else sees. Lock the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # still holding the lock: the next run creates a fresh one
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, final: Path, force: bool) -> None:
    """Rename the finished folder into place (see the module's docstring for the rules)."""
    kill_point("publish")
    if not force:
        try:
            tmp.rename(final)  # refuses a non-empty folder that appeared meanwhile
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        raise UserError(f"--out: {final} appeared while this run was working (another process wrote it); "
                        f"it was left as it is: choose another --out, or pass --force to replace it")
    if not final.exists():
        tmp.rename(final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _disk_message(err: OSError, final: Path, tmp: Path, needed_bytes: int | None) -> str | None:
    """The one line for an OSError while writing the folder, or None if it is not about the disk."""
    mb = 1e6
    if err.errno in SPACE_ERRORS:
        free = shutil.disk_usage(final.parent).free if final.parent.exists() else 0
        written = _written(tmp)
        need = f"; this compile needs about {needed_bytes / mb:.0f} MB" if needed_bytes else ""
        return (f"--out {final.parent}: no space left on the device ({written / mb:.0f} MB written before it "
                f"ran out, {free / mb:.0f} MB free{need}); free some space or choose another --out")
    if err.errno in ACCESS_ERRORS:
        return (f"--out {final.parent}: cannot write there ({err.strerror}: {err.filename or final}); "
                f"choose another --out")
    return None


def remove_stale_partials(final: Path) -> None:
    """Temporary folders left by a run that was killed (SIGKILL cannot be caught) are removed."""
    for stale in [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.old-*")]:
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_folder(final: Path, force: bool, needed_bytes: int | None = None):
    """Yield a temporary folder that becomes `final` only if the block finishes. `needed_bytes`:
    what the compile will write, for the out-of-space message."""
    try:  # checked by check_out_folder already; this is for a folder removed or locked since
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {final.parent}: cannot create a folder there ({err.strerror or err}); "
                        f"choose another --out") from None
    with claim(final):
        if final.exists() and not force:
            raise UserError(f"--out: {final} already exists; pass --force to replace it or choose another --out")
        tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
        try:
            remove_stale_partials(final)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as err:
            raise UserError(f"--out {final.parent}: cannot create a folder there ({err.strerror or err}); "
                            f"choose another --out") from None

        def on_signal(signum, _frame):  # turn SIGTERM into the same clean-up path as Ctrl-C
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            try:
                yield tmp
                publish(tmp, final, force)
            except OSError as err:
                message = _disk_message(err, final, tmp, needed_bytes)
                if message is None:
                    raise
                raise UserError(message) from None
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as err:
                # A runtime that writes the file itself (ONNX Runtime, OpenVINO, the TFLite
                # converter) reports a full disk in its own exception type: judge by the disk.
                if final.parent.exists() and shutil.disk_usage(final.parent).free < LOW_SPACE_BYTES:
                    raise UserError(_disk_message(OSError(errno.ENOSPC, "no space left"), final, tmp,
                                                  needed_bytes)) from None
                raise err
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(tmp, ignore_errors=True)
