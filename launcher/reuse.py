"""May a rerun reuse, replace or continue what is on disk? The plan's refusals (launcher/plan.py) and the job
runner's last check (launcher/job.py) come from here, so both say the same.

- Replacing: an atomic stage publishes over its output folder only when the launcher wrote everything in it
  (core/publish.foreign_entries); otherwise the plan refuses with the fix (an empty folder, or force=true).
- Continuing: training resumes the run folder's checkpoints only when they were made with the same
  training-relevant config (their `_inputs.json`, else their marker); otherwise the plan refuses with the
  differing keys and the two ways on (a new run_dir, or trainer.resume_changed=true). Some keys never change on
  resume: the checkpoint's shards would not load.
- Restarting: force=true on train removes what the trainer wrote in `checkpoints/` (step_N folders, leftovers,
  marker, inputs record), nothing else, before the stages start.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from checkpoint.steps import STEP_RE, complete_steps
from core import publish
from core.config import JobConfig
from core.fingerprint import data_inputs_of, fingerprint, fingerprint_inputs
from core.marker import INPUTS_RECORD, STAGE_MARKER, differences, read_marker, recorded_inputs
from core.paths import final_dir
from core.stages import Stage

# Settings that change no weight: a resume may change them freely.
RESUME_NEUTRAL = ("trainer.checkpoint_interval", "trainer.keep_last", "trainer.eval_interval", "trainer.eval_batches")
# Settings a checkpoint cannot be continued under (its shards have this architecture and split).
_FIXED_PARALLEL = (
    "parallel.tensor_parallel_degree",
    "parallel.pipeline_parallel_degree",
    "parallel.kv_size_multiplier",
    "parallel.qkv_linear",
    "parallel.fuse_qkv",
    "parallel.data_parallel_mode",
    "trainer.backend",
)
_LABELS = ("model.name", "model.init", "model.pretrained_path", "parallel.name")

# Which setting names each atomic stage's output folder (for the refusal's "key" and "fix").
_WHERE = {
    Stage.download: "the download folder (model.pretrained_path / data.tokenizer in cluster.cache_dir)",
    Stage.data: "data.output_dir",
    Stage.convert: "run_dir (its checkpoints/pretrained_weight)",
    Stage.export: "run_dir (its export folder)",
}


def _fixed(key: str) -> bool:
    return key in _FIXED_PARALLEL or (key.startswith("model.") and key not in _LABELS)


def _show(diffs: dict[str, list[Any]], form: str = "{a!r} -> {b!r}") -> str:
    return "; ".join(f"{k}: " + form.format(a=a, b=b) for k, (a, b) in diffs.items())


def foreign_refusal(stage: Stage, cfg: JobConfig, run_dir: Path) -> tuple[str, list[str]]:
    """(refusal paragraph or "", foreign names) for an atomic stage about to publish over its output."""
    final = final_dir(stage, cfg, run_dir)
    foreign = publish.foreign_entries(final)
    if not foreign or cfg.force:
        return "", foreign
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    value = cfg.data.output_dir if stage == Stage.data else str(final)
    key = _WHERE.get(stage, "run_dir")
    return (
        f"{key}={value}: the {stage.value} stage would replace {final}, which holds files the launcher did "
        f"not write ({shown}; no {STAGE_MARKER} of ours lists them), and they would be deleted. Fix: point "
        f"{key.split(' ')[0]} at an empty or new folder (or move those files out), or set force=true to "
        f"replace the folder and everything in it.",
        foreign,
    )


def train_changes(cfg: JobConfig, run_dir: Path) -> tuple[dict[str, list[Any]], Path | None] | None:
    """(differing keys, latest checkpoint) when the run folder's training was made with another config;
    None when there is nothing to continue, no record of its config, or the same config."""
    root = final_dir(Stage.train, cfg, run_dir)
    steps = complete_steps(root)
    if not steps and read_marker(root) is None:
        return None
    recorded = recorded_inputs(root)
    if recorded is None or recorded.get("fingerprint") == fingerprint(Stage.train, cfg):
        return None
    current = {"inputs": fingerprint_inputs(Stage.train, cfg), "data_inputs": data_inputs_of(cfg)}
    diffs = differences(recorded, current)
    return (diffs, steps[-1][1] if steps else None) if diffs else None


def train_refusal(cfg: JobConfig, run_dir: Path) -> tuple[str, str]:
    """(refusal paragraph or "", run reason) for a train stage that would continue the run folder's checkpoints."""
    found = train_changes(cfg, run_dir)
    if found is None:
        return "", ""
    diffs, latest = found
    where = f"{latest.name} in {latest.parent}" if latest else f"{final_dir(Stage.train, cfg, run_dir)}"
    fixed = {k: v for k, v in diffs.items() if _fixed(k)}
    changed = {k: v for k, v in diffs.items() if k not in fixed and k not in RESUME_NEUTRAL}
    new_run = f"run_dir={shlex.quote(str(run_dir) + '-new')}"
    if fixed:
        layout = _show(fixed, "checkpoint {a!r}, config {b!r}")
        return (
            f"run_dir={run_dir}: its training ({where}) was made with a different model or parallel layout, "
            f"which a checkpoint cannot be continued under: {layout}. Fix: use a new run folder "
            f"({new_run}), or force=true to start training again in this one (it removes the launcher's "
            f"checkpoints there).",
            "",
        )
    if changed and not cfg.trainer.resume_changed:
        return (
            f"run_dir={run_dir}: its training ({where}) was made with a different training config, and "
            f"resuming it would continue that run under new settings: {_show(changed)} (old -> new). Fix: "
            f"train from scratch in a new run folder ({new_run}), or set trainer.resume_changed=true to "
            f"continue these checkpoints with the new settings (the change is recorded in their marker).",
            "",
        )
    if changed:
        return "", f"will run: continues {where} with changed settings (trainer.resume_changed=true): {_show(changed)}"
    return "", f"will run: resumes {where}; changed settings that do not affect training: {_show(diffs)}"


def trainer_written(root: Path) -> list[Path]:
    """What the trainer wrote in a checkpoints folder: step_N folders, their leftovers, marker, inputs record."""
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if STEP_RE.match(p.name) or p.name.startswith(".step_") or p.name in (STAGE_MARKER, INPUTS_RECORD):
            out.append(p)
    return out


def restart_training(cfg: JobConfig, run_dir: Path, *, export_runs: bool) -> list[Path]:
    """force=true on train: remove the trainer's files so it starts again from step 0 (other files stay).
    The old export, made from those checkpoints, goes too unless it is being rebuilt anyway or holds files of
    the user's. Returns what was removed."""
    removed = trainer_written(final_dir(Stage.train, cfg, run_dir))
    export = final_dir(Stage.export, cfg, run_dir)
    if not export_runs and read_marker(export) is not None and not publish.foreign_entries(export):
        removed.append(export)
    for p in removed:
        publish.remove(p)
    return removed
