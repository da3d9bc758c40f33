"""The embedded sample corpus: English text that every CPython carries, so the default runs with no network.

`pydoc_data.topics` holds the language reference sections that `help()` shows (about 460 kB of prose and
grammar). Each topic is cut at paragraph boundaries into documents of at least `MIN_CHARS` characters, so the
corpus has a few hundred documents and `data.val_fraction` can hold some of them out. Deterministic for a given
Python version; the topics change between CPython releases, which the data stage's fingerprint (settings only)
does not see: a dataset prepared under another CPython is reused as is (`force=true` rebuilds it).
"""

from __future__ import annotations

from functools import lru_cache

MIN_CHARS = 1500


@lru_cache(maxsize=1)
def documents() -> tuple[str, ...]:
    """Sample documents in a fixed order (topics sorted by name, paragraphs in order)."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for name in sorted(topics):
        current: list[str] = []
        size = 0
        for para in topics[name].split("\n\n"):
            current.append(para)
            size += len(para) + 2
            if size >= MIN_CHARS:
                docs.append("\n\n".join(current).strip("\n"))
                current, size = [], 0
        if current:
            tail = "\n\n".join(current).strip("\n")
            if tail:
                docs.append(tail)
    return tuple(d for d in docs if d.strip())
