"""Hub downloads: model weights and/or a tokenizer from the Hugging Face Hub into the shared cache.

huggingface_hub does the fetching (resumable, revision-pinned, token from HF_TOKEN or `hf auth login`) into a
hub cache inside cluster.cache_dir; the snapshot is then hard-linked (copied across file systems) into a plain
folder, the one the data, convert and train stages read. Offline (HF_HUB_OFFLINE=1) it serves from that cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

WEIGHTS = ["*.safetensors", "*.json", "tokenizer*", "*.model"]
TOKENIZER = ["tokenizer*", "special_tokens_map.json", "config.json", "generation_config.json", "*.model"]


def materialize(snapshot: Path, dest: Path) -> int:
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
