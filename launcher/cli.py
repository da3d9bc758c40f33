"""`python -m launcher [status|cancel] ... | [overrides] [--cfg job] [-m]`.

Subcommands are dispatched before Hydra sees the arguments (Hydra would reject a bare word). Nothing is
written before the whole configuration (every multirun point) has been validated.
"""

from __future__ import annotations

import sys

from core.config import ExecutorKind
from launcher.compose import USER_GROUPS, Composed, ConfigError, compose, options

EXIT_USER_ERROR = 2

HELP = """\
trainium-launcher: Llama 3 pretraining on Trainium (HyperPod, Slurm) and CPU, from one command.

Usage:
  python -m launcher [+model=NAME] [group=option ...] [key=value ...] [dry_run=true]
  python -m launcher -m key=a,b ...          sweep (one run folder per point)
  python -m launcher --cfg job [overrides]   print the composed config and exit
  python -m launcher status [RUN]            stages of a run (RUN = run folder; default: your latest run)
  python -m launcher cancel RUN              cancel a run's jobs or stop its stage (training checkpoints first)

Examples:
  python -m launcher                                         the embedded default: tiny Llama 3, CPU
  python -m launcher +model=llama3_70b parallel=tp32_pp8 cluster=hyperpod dry_run=true
  python -m launcher +model=llama3_8b parallel=tp32_zero1 cluster=hyperpod optim.lr=3e-4 dry_run=true

Config groups (model is appended with +model=, the others are overridden with group=option):
{groups}

Frequently used keys: dry_run, stages=[data,train], run_dir, force, cluster.nodes, cluster.partition,
cluster.accelerator (cpu|cuda|trn1|trn2), optim.lr, data.seq_len, data.paths, data.tokenizer,
data.output_dir, data.format (compact|nxd), trainer.max_steps, trainer.steps_this_run,
trainer.global_batch_size, trainer.micro_batch_size, trainer.seed, trainer.checkpoint_interval,
model.init (scratch|pretrained), model.pretrained_path. `--cfg job` lists every key.
"""


def _help() -> str:
    defaults = {
        "model": "tiny (schema default)",
        "parallel": "none",
        "data": "sample",
        "cluster": "local",
        "recipe": "chosen by the model",
    }
    rows = [
        f"  {('+' if g == 'model' else '') + g:<10} {', '.join(options(g))}   [default: {defaults[g]}]"
        for g in USER_GROUPS
    ]
    return HELP.format(groups="\n".join(rows))


def _fail(problems: list[str]) -> int:
    n = len(problems)
    print(
        f"error: the configuration has {n} problem{'s' if n > 1 else ''}; nothing was written or submitted.\n",
        file=sys.stderr,
    )
    for p in problems:
        print(f"- {p}\n", file=sys.stderr)
    return EXIT_USER_ERROR


def _sweep(overrides: list[str]) -> list[list[str]]:
    """Expand a multirun's comma lists into one override list per point (Hydra's own basic sweeper logic)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(point) for batch in batches for point in batch]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("status", "cancel"):
        from launcher import status

        return status.main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    show_cfg = False
    if "--cfg" in argv:
        i = argv.index("--cfg")
        if argv[i + 1 : i + 2] != ["job"]:
            return _fail(["--cfg takes 'job' (python -m launcher --cfg job [overrides])."])
        show_cfg = True
        del argv[i : i + 2]
    multirun = False
    for flag in ("-m", "--multirun"):
        while flag in argv:
            argv.remove(flag)
            multirun = True
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        return _fail(
            [
                f"Unknown option {bad[0]}. Options: --help, --cfg job, -m/--multirun; everything else is "
                f"key=value or group=option (python -m launcher --help)."
            ]
        )
    try:
        points = _sweep(argv) if multirun else [argv]
    except Exception as exc:  # the override grammar's own parse errors
        return _fail([f"The overrides could not be parsed: {exc}. Fix: use key=value, key=a,b for sweeps."])
    composed: list[Composed] = []
    problems: list[str] = []
    for point in points:
        try:
            composed.append(compose(point))
        except ConfigError as err:
            problems += [f"{_label(point, multirun)}{p}" for p in err.problems]
    if problems:
        return _fail(problems)
    if show_cfg:
        from omegaconf import OmegaConf

        for c in composed:
            print(OmegaConf.to_yaml(OmegaConf.structured(c.cfg)))
        return 0
    return run_all(composed, multirun)


def _label(point: list[str], multirun: bool) -> str:
    return f"[{' '.join(point)}] " if multirun else ""


def run_all(composed: list[Composed], multirun: bool) -> int:
    from launcher.plan import make_plan
    from launcher.validate import resolve_run_dir, validate

    plans, problems = [], []
    sweep_keys = _varying_keys([c.overrides for c in composed]) if multirun else []
    for c in composed:
        run_dir = resolve_run_dir(c)
        if multirun and not c.cfg.run_dir:
            run_dir = run_dir / "multirun" / _point_name(c.overrides, sweep_keys)
        found = validate(c)
        problems += [f"{_label(c.overrides, multirun)}{p}" for p in found]
        if not found:
            plan = make_plan(c, run_dir)
            plans.append(plan)
            # What is on disk forbids this plan (files the launcher did not write, a run made with another config).
            problems += [f"{_label(c.overrides, multirun)}{p}" for p in plan.refusals]
    if problems:
        for plan in plans:
            if plan.refusals and plan.cfg.dry_run:
                print(plan.render(with_scripts=False))
        return _fail(problems)
    live = [p for p in plans if not p.cfg.dry_run]
    if live and live[0].cfg.cluster.executor == ExecutorKind.slurm:
        from launcher.slurm_executor import preflight

        problems = preflight(live)
        if problems:
            return _fail(problems)
    rc = 0
    executors: dict = {}
    for plan in plans:
        print(plan.render(with_scripts=plan.cfg.dry_run))
        if plan.cfg.dry_run:
            print("\ndry run: nothing was written or submitted.")
            continue
        kind = plan.cfg.cluster.executor
        if kind not in executors:  # one per kind and call: a sweep's points share their data job
            from launcher.executor import get_executor

            executors[kind] = get_executor(kind)
        rc = rc or _execute(plan, executors[kind])
    return rc


def _varying_keys(points: list[list[str]]) -> list[str]:
    if len(points) < 2:
        return [o.split("=", 1)[0] for o in points[0]] if points else []
    sets = [dict(o.split("=", 1) for o in p) for p in points]
    return [k for k in sets[0] if len({s.get(k) for s in sets}) > 1]


def _point_name(overrides: list[str], keys: list[str]) -> str:
    import re

    kv = dict(o.lstrip("+").split("=", 1) for o in overrides)
    # Hydra's own naming (key=value,key=value), minus characters that are awkward in a path.
    return re.sub(r"[^\w.=,+-]+", "_", ",".join(f"{k}={kv[k]}" for k in keys if k in kv)) or "point"


def _execute(plan, executor=None) -> int:
    from launcher.runfolder import create_run_folder, print_submitted, print_summary

    create_run_folder(plan)
    train = next((sp for sp in plan.stages if sp.stage.value == "train" and sp.run), None)
    if plan.cfg.force and train is not None:
        from launcher.reuse import restart_training

        export_runs = any(sp.stage.value == "export" and sp.run for sp in plan.stages)
        for path in restart_training(plan.cfg, plan.run_dir, export_runs=export_runs):
            print(f"[train] force=true: removed {path}", flush=True)
    handles = executor.submit(plan)
    if plan.cfg.cluster.executor == ExecutorKind.local:
        rc = 0
        for h in handles:  # only a local run is waited on
            rc = rc or (h.wait() or 0)
        print_summary(plan, rc)
        return rc
    print_submitted(plan, handles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
