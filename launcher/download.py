"""The `download` stage: model weights and/or tokenizer from the Hugging Face Hub into the shared cache.

huggingface_hub does the fetching (resumable, revision-pinned, token from HF_TOKEN or `hf auth login`) into a
hub cache inside cluster.cache_dir; the snapshot is then hard-linked (copied across file systems) into a plain
folder, the one the data, convert and train stages read. Offline (HF_HUB_OFFLINE=1) it serves from that cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from launcher import stages as st
from launcher.schema import Init, JobConfig

WEIGHTS = ["*.safetensors", "*.json", "tokenizer*", "*.model"]
TOKENIZER = ["tokenizer*", "special_tokens_map.json", "config.json", "generation_config.json", "*.model"]


def _materialize(snapshot: Path, dest: Path) -> int:
    """Hard-link every file of a snapshot into dest (copy when links cannot cross file systems)."""
    total = 0
    for src in sorted(snapshot.rglob("*")):
        if src.is_dir():
            continue
        target = dest / src.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = src.resolve()
        try:
            os.link(real, target)
        except OSError:
            shutil.copy2(real, target)
        total += target.stat().st_size
    return total


def fetch(repo_id: str, patterns: list[str], cache: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise ValueError(
            f"{repo_id} is a gated repository and this account has no access to it ({exc}). Fix: "
            f"accept its licence on the Hub, then log in (`hf auth login`) or set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{repo_id} was not found on the Hub (or it is private and no token was given). Fix: "
            f"check the id, or point the setting at a local folder instead."
        ) from None
    except LocalEntryNotFoundError as exc:
        raise ValueError(
            f"{repo_id} is not in the cache {cache} and the Hub cannot be reached ({exc}). Fix: "
            f"run the download stage where the Hub is reachable, or use a local folder."
        ) from None


def run(cfg: JobConfig, ctx: st.StageContext) -> dict[str, Any]:
    cache = st.cache_dir(cfg) / "hf-cache"
    wanted: dict[str, list[str]] = {}
    if cfg.model.init == Init.pretrained and st._is_hub_id(cfg.model.pretrained_path):
        wanted[cfg.model.pretrained_path] = WEIGHTS
    if st._is_hub_id(cfg.data.tokenizer):
        wanted.setdefault(cfg.data.tokenizer, TOKENIZER)
    summary: dict[str, Any] = {"repos": {}}
    for i, (repo, patterns) in enumerate(wanted.items()):
        snapshot = fetch(repo, patterns, cache)
        if i == 0:
            dest = ctx.work_dir  # the stage's own output, published by the job wrapper
        else:
            dest = st.hub_local_dir(cfg, repo)
            if dest.exists():
                summary["repos"][repo] = {"path": str(dest), "reused": True}
                continue
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            _materialize(snapshot, tmp)
            os.replace(tmp, dest)
            summary["repos"][repo] = {
                "path": str(dest),
                "bytes": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()),
            }
            continue
        size = _materialize(snapshot, dest)
        summary["repos"][repo] = {"path": str(ctx.final_dir), "bytes": size, "snapshot": snapshot.name}
    return summary
