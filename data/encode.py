"""Read and tokenize corpus pieces in worker processes, results in piece order (so output is deterministic).

Each worker reads its own pieces (reading scales with the workers) and encodes them with the Rust tokenizer's
`encode_batch_fast` on one thread, so `num_proc` workers use `num_proc` cores. At most `2 * num_proc` pieces
are in flight: memory stays bounded however large the corpus is. `num_proc=1` runs in this process.
Workers are spawned (not forked): the parent may hold tokenizer or OpenMP thread pools that fork would break.
A worker that dies (the OOM killer, a stray `kill -9`) would leave its piece unanswered forever in a plain
`multiprocessing.Pool`; the parent watches its workers while it waits and stops with an error instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from data.sources import Piece, read

# Documents per encode_batch call and characters per call: bounds a worker's memory on huge pieces.
BATCH_DOCS = 1024
BATCH_CHARS = 1 << 20
STARTUP_TIMEOUT_S = 600
# How often the parent checks that its workers are alive while it waits for a piece.
WATCH_INTERVAL_S = 1.0

_TOKENIZER: Any = None
_EOS: int | None = None


@dataclass
class Encoded:
    piece: Piece
    tokens: np.ndarray  # int32, the piece's documents concatenated
    lengths: np.ndarray  # int64, tokens per document
    chars: int
    pid: int


def init(tokenizer_json: str, eos_id: int | None, single_thread: bool = True, ready: Any = None) -> None:
    global _TOKENIZER, _EOS
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if ready is not None:  # a worker: Ctrl-C is the parent's to handle (it terminates the pool)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tokenizers import Tokenizer

    _TOKENIZER = Tokenizer.from_str(tokenizer_json)
    _EOS = eos_id
    if ready is not None:
        # A replacement for a dead worker finds a fresh (cyclic) barrier and waits in vain until the parent,
        # which stops on a dead worker, terminates the pool.
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(STARTUP_TIMEOUT_S)


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encode_piece(piece: Piece) -> Encoded:
    """Tokenize one piece; ids go to numpy per batch so a worker holds few Python ints at a time."""
    parts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    chars = 0
    for batch in _batches(read(piece)):
        chars += sum(map(len, batch))
        ids = [e.ids for e in _TOKENIZER.encode_batch_fast(batch)]
        if _EOS is not None:
            for doc in ids:
                doc.append(_EOS)
        n = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(n.sum())))
        lengths.append(n)
    if not parts:
        return Encoded(piece, np.empty(0, np.int32), np.empty(0, np.int64), 0, os.getpid())
    return Encoded(piece, np.concatenate(parts), np.concatenate(lengths), chars, os.getpid())


class Encoder:
    """Ordered, bounded parallel map of `encode_piece` over pieces."""

    def __init__(self, tokenizer_json: str, eos_id: int | None, num_proc: int):
        self.num_proc = num_proc
        self.pool = None
        self.workers: list[Any] = []
        if num_proc > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            before = set(mp.active_children())
            # Every worker loads the tokenizer before the first piece is handed out, so the work spreads over
            # all of them and start-up is measured apart from encoding.
            ready = ctx.Barrier(num_proc + 1)
            self.pool = ctx.Pool(num_proc, initializer=init, initargs=(tokenizer_json, eos_id, True, ready))
            try:
                ready.wait(STARTUP_TIMEOUT_S)
            except BaseException:
                self.close()
                raise
            self.workers = [p for p in mp.active_children() if p not in before]
        else:
            init(tokenizer_json, eos_id, single_thread=False)

    def map(self, pieces: Iterable[Piece]) -> Iterator[Encoded]:
        if self.pool is None:
            yield from map(encode_piece, pieces)
            return
        window: deque = deque()
        for piece in pieces:
            window.append(self.pool.apply_async(encode_piece, (piece,)))
            if len(window) >= 2 * self.num_proc:
                yield self._wait(window.popleft())
        while window:
            yield self._wait(window.popleft())

    def _wait(self, result: Any) -> Encoded:
        import multiprocessing as mp

        while True:
            try:
                return result.get(WATCH_INTERVAL_S)
            except mp.TimeoutError:
                dead = [p for p in self.workers if p.exitcode is not None]
                if dead:
                    codes = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead)
                    raise RuntimeError(
                        f"data stage: an encode worker died ({codes}; -9 is SIGKILL, often the OOM killer), "
                        f"so its piece of the corpus will never arrive. Nothing was published; rerun the "
                        f"stage (with a lower data.num_proc if memory ran out)."
                    ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
