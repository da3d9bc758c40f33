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

from core import publish
from core.paths import data_dir
from core.stage_status import read_status
from launcher.plan import Plan, plan_json


def user() -> str:
    import getpass
    import re

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return re.sub(r"[^\w.-]+", "_", name) or "user"


def latest_pointer(runs_dir: Path) -> Path:
    """`<runs_dir>/.latest-<user>`: this user's latest run under this runs folder (one per user, so users
    sharing a runs folder on /fsx never see each other's runs as theirs)."""
    return runs_dir / f".latest-{user()}"


def latest_run(runs_dir: Path) -> Path | None:
    """This user's latest run folder under `runs_dir`: the pointer, else the newest run.json there that this
    user made (up to three levels down: <name>/, <name>/multirun/<point>/)."""
    try:
        target = Path(latest_pointer(runs_dir).read_text().strip())
        if (target / "run.json").is_file():
            return target
    except OSError:
        pass
    mine = []
    for depth in ("*", "*/*", "*/*/*"):
        for meta in runs_dir.glob(f"{depth}/run.json"):
            try:
                if meta.stat().st_uid == os.getuid():
                    mine.append((meta.stat().st_mtime, meta.parent))
            except OSError:
                continue
    return max(mine)[1] if mine else None


def create_run_folder(plan: Plan) -> None:
    from omegaconf import OmegaConf

    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    yaml = OmegaConf.to_yaml(OmegaConf.structured(plan.cfg))
    (run_dir / "config.yaml").write_text(yaml)
    (run_dir / "plan.txt").write_text(plan.render() + "\n")
    meta = plan_json(plan) | {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "user": user(),
        "executor": plan.cfg.cluster.executor.value,
        "command": [redact(a) for a in [sys.executable, "-m", "launcher", *sys.argv[1:]]],
        "cwd": os.getcwd(),
        "git": _git(),
        "versions": _versions(),
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    runs_dir = Path(os.path.expanduser(plan.cfg.cluster.runs_dir))
    runs_dir.mkdir(parents=True, exist_ok=True)
    publish.write_text(latest_pointer(runs_dir), str(run_dir.resolve()))


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


def _num(value, spec: str = ".3f") -> str | None:
    # Summaries come from status files and markers: any field can be missing, None, NaN or of another type.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return format(value, spec)


def train_summary_text(summ: dict) -> str:
    """One line of a training summary: losses, validation losses, tokens/s, where it resumed ("" if empty)."""
    num = _num
    parts = []
    first, last, steps = num(summ.get("loss_first")), num(summ.get("loss_last")), summ.get("steps")
    if first and last:
        parts.append(f"loss {first} -> {last} over {steps} steps")
    elif isinstance(steps, int):
        step, max_steps = summ.get("step"), summ.get("max_steps")
        at = f" (at step {step} of {max_steps})" if step is not None and max_steps is not None else ""
        parts.append(f"{steps} steps this run{at}")
    v0, v1 = num(summ.get("val_loss_initial")), num(summ.get("val_loss"))
    if v1:
        parts.append(f"validation loss {v0} -> {v1}" if v0 else f"validation loss {v1}")
    tps = num(summ.get("tokens_per_s"), ",.0f")
    if tps:
        parts.append(f"{tps} tokens/s")
    if summ.get("resumed_from"):
        parts.append(f"resumed from {summ['resumed_from']}")
    return ", ".join(parts)


def print_summary(plan: Plan, rc: int) -> None:
    lines = ["", "Summary" + ("" if rc == 0 else f" (stopped: exit code {rc})")]
    planned = {sp.stage.value for sp in plan.stages}
    for sp in plan.stages:
        s = read_status(plan.run_dir, sp.stage.value)
        state = s.get("state", "not run")
        lines.append(f"  {sp.stage.value:<8} {state:<10} {sp.output}")
        summ = s.get("summary") or {}
        if sp.stage.value != "train" or not isinstance(summ, dict) or not summ:
            continue
        text = train_summary_text(summ)
        if text:
            lines.append("           " + text)
    lines.append(f"  run folder:   {plan.run_dir}")
    if "train" in planned:
        lines.append(f"  checkpoints:  {plan.run_dir / 'checkpoints'}")
        lines.append(f"  tensorboard:  tensorboard --logdir {_quote(plan.run_dir / 'tensorboard')}")
    if "data" in planned or "train" in planned:
        lines.append(f"  dataset:      {data_dir(plan.cfg)}")
    lines.append(f"  status later: python -m launcher status {_quote(plan.run_dir)}")
    print("\n".join(lines), flush=True)


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


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
