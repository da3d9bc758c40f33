"""The one way outputs reach their final path: write into a temporary sibling, then rename into place.

Every writer of a folder that another stage or a rerun reads (datasets, tokenizers, downloads, conversions,
exports, training checkpoints, status files) goes through here, so a killed job leaves either the previous
output or the new one, never a half-written one where a complete one is expected.

Temporary names are `.<name>.<kind>-<host>-<pid>` (kind: tmp = being written, old = the output being replaced,
trash = being deleted). One stale-clean-up policy for all of them: a leftover whose owner process is gone
(same host, pid not alive) is removed by the next writer of the same path; a leftover of another host is
removed once it has not changed for STALE_OTHER_HOST_S (its owner cannot be asked on a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KINDS = ("tmp", "old", "trash")
STALE_OTHER_HOST_S = 7 * 24 * 3600


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def sibling(final: Path, kind: str = "tmp") -> Path:
    """This process's temporary sibling of `final` of the given kind."""
    assert kind in KINDS
    return final.parent / f".{final.name}.{kind}-{_host()}-{os.getpid()}"


def _owner(leftover: Path, final: Path) -> tuple[str, int] | None:
    """(host, pid) of a leftover of `final`, or None when the name is not one of ours."""
    for kind in KINDS:
        prefix = f".{final.name}.{kind}-"
        if leftover.name.startswith(prefix):
            tag = leftover.name[len(prefix) :]
            host, _, pid = tag.rpartition("-")
            if pid.isdigit():
                return host or _host(), int(pid)  # no host: the format before hosts were recorded
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(leftover: Path, final: Path) -> bool:
    owner = _owner(leftover, final)
    if owner is None:
        return False
    host, pid = owner
    if host == _host():
        return pid != os.getpid() and not _alive(pid)
    try:
        return time.time() - leftover.stat().st_mtime > STALE_OTHER_HOST_S
    except OSError:
        return False


def clean_stale(final: Path) -> list[Path]:
    """Remove the leftovers of `final` whose owners are gone; returns what was removed."""
    removed = []
    if final.parent.is_dir():
        for p in final.parent.glob(f".{final.name}.*-*"):
            if is_stale(p, final):
                _rmtree(p)
                removed.append(p)
    return removed


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(work: Path, final: Path) -> None:
    """Move a finished `work` folder (or file) to `final`; a previous `final` is removed only after the swap."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = sibling(final, "old")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        _rmtree(old)


def remove(path: Path) -> None:
    """Delete a folder so that a kill midway never leaves a half-deleted one under its own name."""
    if not path.exists():
        return
    trash = sibling(path, "trash")
    os.replace(path, trash)
    _rmtree(trash)


@contextlib.contextmanager
def publishing(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final` to fill; published by `swap_in` when the body returns,
    removed when it raises (or is interrupted)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    work = sibling(final)
    _rmtree(work)
    work.mkdir()
    try:
        yield work
    except BaseException:
        _rmtree(work)
        raise
    swap_in(work, final)


def write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace a small file atomically (status files, markers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path)
    with open(tmp, "w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any, *, fsync: bool = False) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n", fsync=fsync)
