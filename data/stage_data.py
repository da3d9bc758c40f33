"""The `data` stage's adapter: the job config -> the corpus, the tokenizer and the output folder."""

from __future__ import annotations

import time
from typing import Any

from core import paths
from core.config import JobConfig
from core.stages import StageContext


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    from data import sources, tokenizer
    from data.config import DataSource
    from data.prepare import prepare

    t0 = time.perf_counter()
    d = cfg.data
    hub_root = paths.hub_dataset_dir(cfg) if d.source == DataSource.hub else None
    corpus = sources.plan_corpus(d, hub_root)
    folder = tokenizer.tokenizer_folder(d.tokenizer, paths.tokenizer_dir(cfg), sample_vocab_size=cfg.model.vocab_size)
    tok = tokenizer.load(folder, setting=d.tokenizer, model_vocab_size=cfg.model.vocab_size, model_name=cfg.model.name)
    return prepare(d, corpus, tok, ctx.work_dir, t0=t0)
