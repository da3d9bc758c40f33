"""The run folder: resolved config, plan, per-stage status; and the summary printed when a run ends."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from core.paths import data_dir
from launcher.plan import Plan, plan_json

LAST_RUN = "last_run"


def last_run_pointer() -> Path:
    root = os.environ.get("TRAINIUM_LAUNCHER_CACHE") or os.path.expanduser("~/.cache/trainium-launcher")
    return Path(root) / LAST_RUN


def create_run_folder(plan: Plan) -> None:
    from omegaconf import OmegaConf

    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    yaml = OmegaConf.to_yaml(OmegaConf.structured(plan.cfg))
    (run_dir / "config.yaml").write_text(yaml)
    (run_dir / "plan.txt").write_text(plan.render() + "\n")
    meta = plan_json(plan) | {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "executor": plan.cfg.cluster.executor.value,
        "command": [redact(a) for a in [sys.executable, "-m", "launcher", *sys.argv[1:]]],
        "cwd": os.getcwd(),
        "git": _git(),
        "versions": _versions(),
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    pointer = last_run_pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(str(run_dir.resolve()))


SECRET = re.compile(r"(token|secret|password|passwd|api_key|access_key)", re.IGNORECASE)
ROOT = Path(__file__).resolve().parent.parent


def redact(arg: str) -> str:
    """key=value with a secret-looking key -> key=<redacted> (the command line is saved and printed)."""
    key, sep, _ = arg.partition("=")
    return f"{key}=<redacted>" if sep and SECRET.search(key) else arg


def _git() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _versions() -> dict:
    from importlib import metadata

    names = ("trainium-launcher", "torch", "transformers", "datasets", "tokenizers", "hydra-core", "submitit")
    out = {"python": sys.version.split()[0]}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


def read_status(run_dir: Path, stage: str) -> dict:
    try:
        return json.loads((run_dir / "stages" / stage / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def print_summary(plan: Plan, rc: int) -> None:
    lines = ["", "Summary" + ("" if rc == 0 else f" (stopped: exit code {rc})")]
    for sp in plan.stages:
        s = read_status(plan.run_dir, sp.stage.value)
        state = s.get("state", "not run")
        lines.append(f"  {sp.stage.value:<8} {state:<10} {sp.output}")
        summ = s.get("summary") or {}
        if sp.stage.value == "train" and summ and "loss_first" in summ:
            lines.append(
                f"           loss {summ['loss_first']:.3f} -> {summ['loss_last']:.3f} over {summ.get('steps')} steps, "
                f"{summ.get('tokens_per_s', 0):,.0f} tokens/s"
                + (f", resumed from {summ['resumed_from']}" if summ.get("resumed_from") else "")
            )
    lines += [
        f"  run folder:   {plan.run_dir}",
        f"  checkpoints:  {plan.run_dir / 'checkpoints'}",
        f"  tensorboard:  tensorboard --logdir {plan.run_dir / 'tensorboard'}",
        f"  dataset:      {data_dir(plan.cfg)}",
        f"  status later: python -m launcher status {plan.run_dir}",
    ]
    print("\n".join(lines), flush=True)


def print_submitted(plan: Plan, handles: list) -> None:
    """What a Slurm submission queued: job ids, logs, and how to follow the run. The jobs run on their own."""
    lines = ["", "Submitted" if handles else "Nothing to submit: every stage is complete."]
    for h in handles:
        lines.append(f"  {h.stage.value:<8} job {h.job_id:<10} log: {h.log}")
    lines += [
        f"  run folder:   {plan.run_dir}",
        f"  status:       python -m launcher status {plan.run_dir}",
        f"  cancel:       python -m launcher cancel {plan.run_dir}",
    ]
    print("\n".join(lines), flush=True)
