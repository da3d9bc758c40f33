"""The run folder: resolved config, plan, per-stage status; and the summary printed when a run ends."""

from __future__ import annotations

import datetime as dt
import json
import os
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
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    pointer = last_run_pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(str(run_dir.resolve()))


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
