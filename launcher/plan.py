"""The plan: which stages run or are skipped (and why), their resources, dependencies, commands and the sbatch
script each would get. Printed by dry runs and saved in the run folder; the executors consume it.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from checkpoint.steps import latest as latest_step
from core import nxd_args, paths
from core.arithmetic import Derived, backend_for, derive
from core.config import Accelerator, ExecutorKind, JobConfig
from core.fingerprint import as_plain
from core.marker import is_complete
from core.stages import SPECS, Stage, selected
from launcher import reuse
from launcher.compose import Composed
from launcher.nxd_env import launch_argv, nxd_env
from model.config import Init
from train.config import Backend


@dataclass
class StagePlan:
    stage: Stage
    run: bool
    reason: str
    output: Path
    after: list[Stage]
    nodes: int
    processes_per_node: int
    command: list[str]
    sbatch: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # The convert stage's converter flags (core/nxd_args.py:convert_args); empty elsewhere.
    nxd_args: list[str] = field(default_factory=list)
    # nxd compile/train: what the nxd backend does with this config (core/nxd_args.py:backend_settings).
    nxd_settings: list[str] = field(default_factory=list)
    # Why this stage must not run as configured (one paragraph with the fix); the plan is then refused.
    refusal: str = ""


@dataclass
class Plan:
    composed: Composed
    derived: Derived
    run_dir: Path
    stages: list[StagePlan]

    @property
    def cfg(self) -> JobConfig:
        return self.composed.cfg

    @property
    def refusals(self) -> list[str]:
        return [sp.refusal for sp in self.stages if sp.refusal]

    def render(self, with_scripts: bool = True) -> str:
        cfg, ch = self.cfg, self.composed.choices
        lines = [
            "Plan for "
            + " ".join(f"{g}={ch[g]}" for g in ("model", "parallel", "data", "cluster", "recipe") if g in ch),
            f"  run folder: {self.run_dir}",
            "",
            "Derived numbers",
        ]
        o, init = cfg.optim, cfg.model.init.value
        schedule = f"{o.schedule.value}: lr {o.lr:g}, warmup {o.warmup_steps}, min_lr {o.min_lr:g}"
        rows = [
            *self.derived.as_rows(),
            ("sequence length", str(cfg.data.seq_len)),
            ("schedule", f"{schedule}, {cfg.trainer.max_steps} steps"),
            (
                "data",
                f"{cfg.data.name} ({cfg.data.format.value}), tokenizer {cfg.data.tokenizer} -> {paths.data_dir(cfg)}",
            ),
            ("init", init + (f" from {cfg.model.pretrained_path}" if init == "pretrained" else "")),
        ]
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += ["", "Stages"]
        for i, sp in enumerate(self.stages, 1):
            state = "REFUSED" if sp.refusal else "run " if sp.run else "skip"
            after = f" after {','.join(s.value for s in sp.after)}" if sp.after else ""
            where = f"{sp.nodes} node{'s' if sp.nodes > 1 else ''} x {sp.processes_per_node} proc"
            lines.append(f"  {i}. {sp.stage.value:<8} {state}  {where}{after}  ({sp.reason})")
            lines.append(f"       output:  {sp.output}")
            lines.append(f"       command: {_shell(sp.command)}")
            if sp.nxd_args:
                lines.append(f"       nxd:     {_shell(sp.nxd_args)}")
            if sp.nxd_settings:
                lines.append(f"       nxd:     {'; '.join(sp.nxd_settings)}")
        if with_scripts:
            for sp in self.stages:
                if sp.sbatch and sp.run:
                    lines += ["", f"--- sbatch script: {sp.stage.value} ---", sp.sbatch.rstrip()]
        return "\n".join(lines)


def python_of(cfg: JobConfig) -> str:
    """The jobs' interpreter: this checkout's by default (the checkout and its venv must then be on a file system
    every node sees); cluster.python names another, a venv folder meaning its bin/python. Local runs always use
    this one."""
    p = cfg.cluster.python
    if not p or cfg.cluster.executor == ExecutorKind.local:
        return sys.executable
    path = Path(os.path.expanduser(p))
    return str(path / "bin" / "python") if path.is_dir() else str(path)


def job_command(cfg: JobConfig, stage: Stage, run_dir: Path, procs: int, nodes: int) -> list[str]:
    """What a stage runs: the job wrapper, under torchrun when it has several processes. On Slurm each node's task
    (launcher/slurm_job.py) fills in its node rank and the rendezvous from the job's environment."""
    py = python_of(cfg)
    wrapper = ["-m", "launcher.job", str(run_dir), stage.value]
    if not SPECS[stage].distributed or procs * nodes <= 1:
        return [py, *wrapper]
    torchrun = [py, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    if cfg.cluster.executor == ExecutorKind.local:
        return [*torchrun, "--standalone", *wrapper]
    if backend_for(cfg) == Backend.nxd and cfg.cluster.accelerator == Accelerator.trn1:
        # What NxD's per-node script that these jobs run executes (launcher/nxd_env.py:node_command).
        return launch_argv(cfg, run_dir, stage, py, "<SLURM_NODEID>", "<first host of the allocation>")
    return [
        *torchrun,
        f"--nnodes={nodes}",
        "--node_rank=<SLURM_NODEID>",
        "--master_addr=<node 0: SLURM_LAUNCH_NODE_IPADDR>",
        "--master_port=<20000 + job id % 20000>",
        "--max_restarts=0",
        *wrapper,
    ]


def _resources(cfg: JobConfig, d: Derived, stage: Stage) -> tuple[int, int]:
    if SPECS[stage].distributed:
        return cfg.cluster.nodes, d.devices_per_node
    return 1, 1


def _shell(command: list[str]) -> str:
    return shlex.join(command)


def make_plan(composed: Composed, run_dir: Path) -> Plan:
    cfg = composed.cfg
    d = derive(cfg)
    chosen = selected(cfg)
    out: list[StagePlan] = []
    for stage in chosen:
        spec = SPECS[stage]
        done, why = is_complete(stage, cfg, run_dir)
        if cfg.force:
            done, why = False, "force=true"
        run = not done
        reason = "will run: " + why if run else "skipped: " + why
        refusal = ""
        if run and spec.atomic:
            refusal, foreign = reuse.foreign_refusal(stage, cfg, run_dir)
            if foreign and not refusal:
                reason += f" (replaces files the launcher did not write: {', '.join(foreign[:5])})"
        if run and stage == Stage.train:
            written = reuse.trainer_written(paths.final_dir(stage, cfg, run_dir))
            if cfg.force:
                reason = "will run: force=true: starts training again from step 0" + (
                    f" (first removes the trainer's {', '.join(p.name for p in written)}; other files stay)"
                    if written
                    else ""
                )
            else:
                refusal, changed = reuse.train_refusal(cfg, run_dir)
                if changed:
                    reason = changed
                elif latest_step(paths.final_dir(stage, cfg, run_dir)):
                    reason = "will run: resumes from its latest complete checkpoint"
        if refusal:
            reason = "refused: see the error below"
        after = [s for s in spec.needs if s in chosen]
        nodes, procs = _resources(cfg, d, stage)
        command = job_command(cfg, stage, run_dir, procs, nodes)
        env = nxd_env(cfg, str(paths.cache_dir(cfg))) if d.backend == Backend.nxd and spec.distributed else {}
        out.append(
            StagePlan(
                stage,
                run,
                reason,
                paths.final_dir(stage, cfg, run_dir),
                after,
                nodes,
                procs,
                command,
                "",
                env,
                _nxd_args(cfg, stage, run_dir),
                _nxd_settings(cfg, d, stage, run_dir),
                refusal,
            )
        )
    plan = Plan(composed, d, run_dir, out)
    if cfg.cluster.executor == ExecutorKind.slurm:
        from launcher.slurm_executor import render

        for sp in plan.stages:
            sp.sbatch = render(plan, sp)
    return plan


def _nxd_args(cfg: JobConfig, stage: Stage, run_dir: Path) -> list[str]:
    if stage == Stage.convert:
        return nxd_args.convert_args(cfg, paths.pretrained_dir(cfg), paths.final_dir(stage, cfg, run_dir))
    return []


def _nxd_settings(cfg: JobConfig, d: Derived, stage: Stage, run_dir: Path) -> list[str]:
    if stage not in (Stage.compile, Stage.train) or d.backend != Backend.nxd:
        return []
    converted = paths.final_dir(Stage.convert, cfg, run_dir) if cfg.model.init == Init.pretrained else None
    settings = nxd_args.backend_settings(cfg, paths.final_dir(Stage.train, cfg, run_dir), converted)
    if stage == Stage.compile:
        from train.stage_compile import COMPILE_STEPS, compile_cache

        # the same graphs as training (same settings), a few steps, nothing kept but the compile cache
        settings[-1] = f"{COMPILE_STEPS} steps, no checkpoints, graphs into {compile_cache(cfg)}"
    return settings


def plan_json(plan: Plan) -> dict:
    return {
        "run_dir": str(plan.run_dir),
        "choices": plan.composed.choices,
        "overrides": plan.composed.overrides,
        "derived": as_plain(plan.derived),
        "stages": [
            {
                "stage": s.stage.value,
                "run": s.run,
                "reason": s.reason,
                "output": str(s.output),
                "after": [a.value for a in s.after],
                "nodes": s.nodes,
                "processes_per_node": s.processes_per_node,
                "command": s.command,
                "nxd_args": s.nxd_args,
                "nxd_settings": s.nxd_settings,
            }
            for s in plan.stages
        ],
    }
