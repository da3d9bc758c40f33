"""Shared helpers for the data-stage tests (no tests here): configs, corpora on disk, reference tokenization."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from core.config import JobConfig
from core.stages import Stage, StageContext
from data.config import DataSource

_TEXT = (
    "the model reads tokens and predicts the next one while the optimizer updates weights; "
    "Trainium cores compile graphs, données, naïve façade, 東京, emoji 🙂 and numbers 12345 67"
)
WORDS = tuple(_TEXT.split())


def make_cfg(tmp: Path, **data: Any) -> JobConfig:
    cfg = JobConfig()
    cfg.cluster.cache_dir = str(tmp / "cache")
    cfg.data.num_proc = 1
    for k, v in data.items():
        setattr(cfg.data, k, v)
    if cfg.data.paths and "source" not in data:
        cfg.data.source = DataSource.files
    return cfg


def documents(n: int, seed: int = 0, max_words: int = 120) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        k = rng.randint(1, max_words)
        text = " ".join(rng.choice(WORDS) for _ in range(k))
        if rng.random() < 0.3:
            text += "\n\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
        docs.append(text)
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, d in enumerate(docs):
            fh.write(json.dumps({"id": i, field: d}, ensure_ascii=False) + "\n")
    return path


def prepare(cfg: JobConfig, out: Path) -> dict[str, Any]:
    """Run the stage's adapter as launcher.job does: into a temporary sibling, then publish with the marker."""
    from core import publish
    from core.marker import write_marker
    from data.stage_data import run

    with publish.publishing(out) as work:
        summary = run(cfg, StageContext(Stage.data, out.parent, work, out))
        write_marker(work, Stage.data, cfg, summary)
    return summary


def hf_tokenizer(cfg: JobConfig) -> Any:
    from transformers import AutoTokenizer

    from core.paths import tokenizer_dir
    from data.tokenizer import tokenizer_folder

    return AutoTokenizer.from_pretrained(
        str(tokenizer_folder(cfg.data.tokenizer, tokenizer_dir(cfg), sample_vocab_size=cfg.model.vocab_size))
    )


def reference_blocks(tok: Any, docs: list[str], seq_len: int, eos: int | None = None) -> tuple[np.ndarray, int]:
    """Documents tokenized one by one with the tokenizer's own call, concatenated, cut into blocks."""
    stream: list[int] = []
    for d in docs:
        ids = tok(d)["input_ids"]
        stream.extend(ids + ([eos] if eos is not None else []))
    n = len(stream) // seq_len * seq_len
    return np.array(stream[:n], dtype=np.int32).reshape(-1, seq_len), len(stream) - n


def load_blocks(folder: Path) -> np.ndarray:
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if ds.num_rows == 0:
        return np.zeros((0, 0), dtype=np.int32)
    return np.asarray(ds.with_format("numpy")[:]["input_ids"], dtype=np.int32)
