"""The one way outputs reach their final path: write into a temporary sibling, then rename into place.

Every writer of a folder that another stage or a rerun reads (datasets, tokenizers, downloads, conversions,
exports, training checkpoints, status files) goes through here, so a killed job leaves either the previous
output or the new one, never a half-written one where a complete one is expected.

Temporary names are `.<name>.<kind>-<host>-<pid>` (kind: tmp = being written, old = the output being replaced,
trash = being deleted). One stale-clean-up policy for all of them: a leftover whose owner process is gone
(same host, pid not alive) is removed by the next writer of the same path; a leftover of another host is
removed once it has not changed for STALE_OTHER_HOST_S (its owner cannot be asked on a shared file system).
An `old` leftover whose final path is gone (killed between the two renames of a swap) is the last good output:
it is renamed back, never deleted.

Ownership: the launcher replaces or deletes only what it wrote. A folder is ours when it holds our marker
(`_stage.json`, or the caller's marker such as a checkpoint's `COMPLETE`), and then only the entries the marker
lists (a marker without a list owns the whole folder). Publishing over a folder with anything else in it
(a user's files, a dataset NxD's get_dataset.py wrote, a model card added to an export) raises
ForeignOutputError unless the caller passes `force=True` (the user's `force=true`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KINDS = ("tmp", "old", "trash")
STALE_OTHER_HOST_S = 7 * 24 * 3600
# The stage marker (core/marker.py writes it): the sign that the launcher made a folder.
MARKER = "_stage.json"
# Signals held back while a swap renames (so an interrupt never falls between "old moved away" and "new in").
_HELD = {signal.SIGINT, signal.SIGTERM}


class ForeignOutputError(ValueError):
    """Publishing would replace files the launcher did not write."""


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
    """Remove the leftovers of `final` whose owners are gone; returns what was removed. A stale `old` leftover
    of a missing `final` is restored instead (the swap that made it was killed before the new one arrived)."""
    removed = []
    if final.parent.is_dir():
        for p in sorted(final.parent.glob(f".{final.name}.*-*")):
            if not is_stale(p, final):
                continue
            if p.name.startswith(f".{final.name}.old-") and not final.exists():
                os.replace(p, final)
                continue
            _rmtree(p)
            removed.append(p)
    return removed


def foreign_entries(final: Path, marker: str = MARKER) -> list[str]:
    """Names in the folder `final` that the launcher did not write (empty: absent, empty, or all ours)."""
    if not final.exists() and not final.is_symlink():
        return []
    if not final.is_dir() or final.is_symlink():
        return [final.name]
    names = sorted(p.name for p in final.iterdir())
    if marker not in names:
        return names
    listed = None
    if marker == MARKER:
        try:
            listed = json.loads((final / marker).read_text()).get("entries")
        except (OSError, ValueError, AttributeError):
            listed = None
    if not isinstance(listed, list):
        return []  # a marker from before entries were recorded: the folder is ours
    return [n for n in names if n != marker and n not in listed]


def check_replaceable(final: Path, *, force: bool = False, marker: str = MARKER) -> None:
    """Raise ForeignOutputError when replacing `final` would delete files the launcher did not write."""
    foreign = [] if force else foreign_entries(final, marker)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ForeignOutputError(
            f"{final} holds files the launcher did not write ({shown}); publishing there would delete them. "
            f"Fix: point the setting at an empty or new folder, or set force=true to replace the folder."
        )


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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (they are delivered right after it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def swap_in(work: Path, final: Path, *, force: bool = False, marker: str = MARKER) -> None:
    """Move a finished `work` folder (or file) to `final`; a previous `final` is removed only after the swap.
    A previous `final` holding files the launcher did not write is refused unless `force` (check_replaceable)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(final, force=force, marker=marker)
    old = None
    with _signals_held():
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
def publishing(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final` to fill; published by `swap_in` when the body returns,
    removed when it raises (or is interrupted). Refuses up front (ForeignOutputError, nothing written) when
    `final` holds files the launcher did not write, unless `force`."""
    check_replaceable(final, force=force)
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
    try:
        swap_in(work, final, force=force)
    except BaseException:
        _rmtree(work)
        raise


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
