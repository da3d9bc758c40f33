"""The run folder: resolved config, plan, per-stage status; and the summary printed when a run ends."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from launcher import stages as st
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
    def num(value, spec: str = ".3f") -> str | None:
        # Summaries come from status files: any field can be missing, None, NaN or of another type.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return None
        return format(value, spec)

    lines = ["", "Summary" + ("" if rc == 0 else f" (stopped: exit code {rc})")]
    planned = {sp.stage.value for sp in plan.stages}
    for sp in plan.stages:
        s = read_status(plan.run_dir, sp.stage.value)
        state = s.get("state", "not run")
        lines.append(f"  {sp.stage.value:<8} {state:<10} {sp.output}")
        summ = s.get("summary") or {}
        if sp.stage.value != "train" or not isinstance(summ, dict) or not summ:
            continue
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
        if parts:
            lines.append("           " + ", ".join(parts))
    lines.append(f"  run folder:   {plan.run_dir}")
    if "train" in planned:
        lines.append(f"  checkpoints:  {plan.run_dir / 'checkpoints'}")
        lines.append(f"  tensorboard:  tensorboard --logdir {_quote(plan.run_dir / 'tensorboard')}")
    if "data" in planned or "train" in planned:
        lines.append(f"  dataset:      {st.data_dir(plan.cfg)}")
    lines.append(f"  status later: python -m launcher status {_quote(plan.run_dir)}")
    print("\n".join(lines), flush=True)


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
