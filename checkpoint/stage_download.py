"""The `download` stage's adapter: which hub repos this config needs, and where each one's plain folder goes.

The first repo (the weights, else the tokenizer) is the stage's own output (`ctx.work_dir`, published with the
marker by the job runner); a second one (the tokenizer beside the weights) is published on its own.
"""

from __future__ import annotations

from typing import Any

from core import paths, publish
from core.config import JobConfig
from core.stages import StageContext
from model.config import Init


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    from checkpoint.hub import TOKENIZER, WEIGHTS, fetch, materialize

    cache = paths.cache_dir(cfg) / "hf-cache"
    wanted: dict[str, list[str]] = {}
    if cfg.model.init == Init.pretrained and paths.is_hub_id(cfg.model.pretrained_path):
        wanted[cfg.model.pretrained_path] = WEIGHTS
    if paths.is_hub_id(cfg.data.tokenizer):
        wanted.setdefault(cfg.data.tokenizer, TOKENIZER)
    summary: dict[str, Any] = {"repos": {}}
    for i, (repo, patterns) in enumerate(wanted.items()):
        snapshot = fetch(repo, patterns, cache)
        if i == 0:
            size = materialize(snapshot, ctx.work_dir)
            summary["repos"][repo] = {"path": str(ctx.final_dir), "bytes": size, "snapshot": snapshot.name}
            continue
        dest = paths.hub_local_dir(cfg, repo)
        if dest.exists():
            summary["repos"][repo] = {"path": str(dest), "reused": True}
            continue
        with publish.publishing(dest) as tmp:
            size = materialize(snapshot, tmp)
        summary["repos"][repo] = {"path": str(dest), "bytes": size}
    return summary
