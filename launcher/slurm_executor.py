"""Submits a plan's stages as Slurm jobs through submitit's public API, chained with afterok; never waits on them.

Each stage gets one `submitit.SlurmExecutor` configured with `update_parameters` (submitit rejects unknown names
there) from `stage_parameters`, and is submitted as a `StageTask` (launcher/slurm_job.py: node rank, rendezvous
and requeue, all in Python on the node). The dry run renders each script from the very same executor, so the
script the plan prints is the one sbatch receives (only the dependency ids are placeholders until then).
`script_text` is the one use of submitit's private API; tests/test_slurm_submit.py fails loudly if it drifts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core import paths
from core.config import Accelerator, JobConfig, StageResources
from core.marker import now
from core.stages import SPECS, Stage
from launcher.plan import Plan, StagePlan, python_of

SAGEMAKER_MARKER = Path("/opt/sagemaker_cluster")
ROOT = Path(__file__).resolve().parent.parent


def resources(cfg: JobConfig, stage: Stage) -> StageResources:
    return getattr(cfg.cluster.resources, stage.value)


def auto_resume(cfg: JobConfig) -> bool:
    return cfg.cluster.auto_resume or SAGEMAKER_MARKER.exists()


def submitit_folder(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / stage.value / "submitit" / "%j"


def stage_parameters(plan: Plan, sp: StagePlan, dependency: list[str]) -> dict:
    """Everything sbatch gets for this stage, as SlurmExecutor.update_parameters arguments."""
    cfg, c = plan.cfg, plan.cfg.cluster
    r = resources(cfg, sp.stage)
    extra: dict[str, object] = {"kill-on-invalid-dep": "yes", "requeue": True}
    params: dict[str, object] = {
        "job_name": f"{plan.run_dir.name}-{sp.stage.value}",
        "nodes": sp.nodes,
        "ntasks_per_node": 1,
        "time": r.time_min or None,
        "signal_delay_s": c.signal_delay_s,
        "stderr_to_stdout": True,
    }
    if r.cpus:
        params["cpus_per_task"] = r.cpus
    else:
        params["exclusive"] = True
    if r.mem_gb or not r.cpus:
        extra["mem"] = f"{r.mem_gb}G" if r.mem_gb else "0"
    if c.partition:
        params["partition"] = c.partition
    if c.account:
        params["account"] = c.account
    if c.accelerator.value == "cuda" and SPECS[sp.stage].distributed:
        params["gpus_per_node"] = plan.derived.devices_per_node
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
    for opt in c.sbatch_options:
        key, eq, value = opt.lstrip("-").partition("=")
        extra[key] = value if eq else True
    params["additional_parameters"] = extra
    root = shlex.quote(str(ROOT))
    setup = [*c.setup, f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}"]
    # Quoted for the shell: values with spaces, quotes, `;` or `$(...)` arrive intact and run nothing.
    setup += [f"export {k}={shlex.quote(v)}" for k, v in {**c.env, **sp.env}.items()]
    params["setup"] = setup
    srun = list(c.srun_options)
    if c.container_image:
        srun.append(f"--container-image={c.container_image}")
        if c.container_mounts:
            srun.append(f"--container-mounts={c.container_mounts}")
    if auto_resume(cfg) and SPECS[sp.stage].distributed and sp.nodes > 1:
        srun.append("--auto-resume=1")
    params["srun_args"] = srun
    return params


def make_executor(plan: Plan, sp: StagePlan, dependency: list[str]):
    """A submitit SlurmExecutor for this stage. Without Slurm on this machine (a dry run on a laptop) the same class
    is used with its srun detection switched off, so the rendered script is still submitit's."""
    import submitit

    cls = submitit.SlurmExecutor if shutil.which("srun") else _offline_cls()
    ex = cls(folder=submitit_folder(plan.run_dir, sp.stage), python=shlex.quote(python_of(plan.cfg)), max_num_timeout=0)
    ex.update_parameters(**stage_parameters(plan, sp, dependency))
    return ex


def script_text(ex) -> str:
    """The sbatch script `ex.submit` writes (submitit 1.5: `_make_submission_file_text` of its runner command)."""
    return ex._make_submission_file_text(ex._submitit_command_str, "render")


def _offline_cls():
    import submitit

    class Offline(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2

    return Offline


def render(plan: Plan, sp: StagePlan, ids: dict[Stage, str] | None = None) -> str:
    """The stage's sbatch script; dependencies by the ids in `ids`, else `<stage>` placeholders (dry run)."""
    deps = [(ids or {}).get(s, f"<{s.value}>") for s in sp.after if _depends(plan, s)]
    return script_text(make_executor(plan, sp, deps))


def _depends(plan: Plan, stage: Stage) -> bool:
    return any(p.stage == stage and p.run for p in plan.stages)


@dataclass
class SlurmHandle:
    stage: Stage
    job_id: str
    log: Path
    script: Path

    def wait(self) -> int | None:
        return None  # never blocks: `python -m launcher status` shows the job later


def job_record_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / stage.value / "job.json"


def read_job(run_dir: Path, stage: Stage) -> dict:
    try:
        return json.loads(job_record_path(run_dir, stage).read_text())
    except (OSError, ValueError):
        return {}


def active_jobs(ids: list[str]) -> dict[str, str]:
    """{job id: state} of the given jobs that Slurm still has queued or running."""
    if not ids:
        return {}
    r = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.partition(" ")
        if state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "SUSPENDED", "COMPLETING"):
            out[jid] = state
    return out


class SlurmExecutor:
    """One instance per CLI call: stages whose output lives outside the run folder (download, data) are submitted
    once and shared by every sweep point that needs the same output."""

    def __init__(self) -> None:
        self._shared: dict[str, tuple[str, Path]] = {}

    def submit(self, plan: Plan) -> list[SlurmHandle]:
        from core.publish import write_json

        ids: dict[Stage, str] = {}
        handles: list[SlurmHandle] = []
        for sp in plan.stages:
            if not sp.run:
                continue
            out = str(sp.output)
            shared = not out.startswith(str(plan.run_dir) + os.sep)
            prior = read_job(plan.run_dir, sp.stage)
            if shared and out in self._shared:
                jid, log = self._shared[out]
            elif prior.get("job_id") and active_jobs([prior["job_id"]]):
                jid, log = prior["job_id"], Path(prior["log"])  # still queued or running from an earlier call
            else:
                try:
                    jid, log = self._submit_stage(plan, sp, ids)
                except Exception:
                    self._undo(ids, handles)
                    raise
                if shared:
                    self._shared[out] = (jid, log)
            ids[sp.stage] = jid
            script = plan.run_dir / "stages" / sp.stage.value / f"{sp.stage.value}.sbatch"
            if prior.get("job_id") != jid:
                write_json(
                    job_record_path(plan.run_dir, sp.stage),
                    {"job_id": jid, "log": str(log), "script": str(script), "submitted": now(),
                     "history": [*prior.get("history", []), *([prior["job_id"]] if prior.get("job_id") else [])]},
                )  # fmt: skip
            handles.append(SlurmHandle(sp.stage, jid, log, script))
        return handles

    @staticmethod
    def _undo(ids: dict[Stage, str], handles: list[SlurmHandle]) -> None:
        """A submission failed half-way: cancel what this call queued, so no orphan chain is left behind."""
        mine = [h.job_id for h in handles]
        if mine:
            subprocess.run(["scancel", *mine], capture_output=True)
            print(f"submission failed; cancelled the jobs it had queued: {' '.join(mine)}", flush=True)

    def _submit_stage(self, plan: Plan, sp: StagePlan, ids: dict[Stage, str]) -> tuple[str, Path]:
        from launcher.slurm_job import CANCEL_MARKER

        deps = [ids[s] for s in sp.after if s in ids]
        ex = make_executor(plan, sp, deps)
        text = script_text(ex)
        folder = plan.run_dir / "stages" / sp.stage.value
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sp.stage.value}.sbatch").write_text(text)
        # A new submission starts a new series of attempts (launcher/slurm_job.py) and is not cancelled.
        for name in ("requeue.json", CANCEL_MARKER):
            (folder / name).unlink(missing_ok=True)
        job = ex.submit(stage_task(plan, sp))
        log = Path(str(job.paths.stdout).replace("%t", "0"))
        return job.job_id, log


def stage_task(plan: Plan, sp: StagePlan):
    """The callable a stage's job runs on each node (launcher/slurm_job.py)."""
    from launcher.nxd_env import node_command
    from launcher.slurm_job import StageTask

    cfg = plan.cfg
    r = resources(cfg, sp.stage)
    nxd_on_trn1 = bool(sp.env) and cfg.cluster.accelerator == Accelerator.trn1  # plan.py: env = the nxd launch's
    return StageTask(
        run_dir=str(plan.run_dir),
        stage=sp.stage.value,
        nodes=sp.nodes,
        procs=sp.processes_per_node,
        max_requeues=cfg.cluster.max_requeues,
        threads=max(1, r.cpus // max(1, sp.processes_per_node)) if r.cpus else 0,
        node_script=node_command(cfg, plan.run_dir, sp.stage, python_of(cfg), str(paths.cache_dir(cfg)))
        if nxd_on_trn1
        else "",
    )


def preflight(plans: list[Plan]) -> list[str]:
    """What would make the submission fail or never run, found before anything is queued (every problem)."""
    problems: list[str] = []
    if shutil.which("sbatch") is None:
        return [
            "sbatch is not on PATH: cluster.executor=slurm submits with sbatch. Fix: run the launcher on a Slurm "
            "login node (or put Slurm's client commands on PATH), or use cluster=local."
        ]
    parts, err = _partitions()
    if err:
        want = plans[0].cfg.cluster.partition
        return [
            f"cluster.partition={want!r}: Slurm does not answer here, so the partition and the node count cannot "
            f"be checked and nothing can be queued (scontrol show partition: {err}). Fix: run on a login node of "
            "the cluster (with its slurm.conf, or SLURM_CONF set), or use dry_run=true or cluster=local."
        ]
    for plan in plans:
        c = plan.cfg.cluster
        name = c.partition or next((p for p, v in parts.items() if v["default"]), "")
        if c.partition and c.partition not in parts:
            problems.append(
                f"cluster.partition={c.partition!r}: this cluster has no such partition (sinfo lists: "
                f"{', '.join(sorted(parts)) or 'none'}). Fix: set cluster.partition to one of them."
            )
        elif not name:
            problems.append(
                "cluster.partition is empty and this cluster has no default partition. Fix: set "
                f"cluster.partition to one of: {', '.join(sorted(parts)) or 'none'}."
            )
        else:
            problems += _fit(plan, name, parts[name])
        problems += _folders(plan)
        for k in c.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                problems.append(
                    f"cluster.env.{k}: not a valid environment variable name. Fix: use letters, digits and _ only."
                )
        py = python_of(plan.cfg)
        if not c.container_image and not os.access(py, os.X_OK):
            problems.append(
                f"cluster.python={c.python!r}: {py} is not an executable interpreter. Fix: point cluster.python at "
                "a venv folder or a python binary on a file system every node sees (empty = this checkout's)."
            )
        img = c.container_image
        local_image = img.startswith(("/", "./", "~")) or img.endswith(".sqsh")
        if img and local_image and not Path(os.path.expanduser(img)).exists():
            problems.append(
                f"cluster.container_image={img!r}: no such file. Fix: import it first (enroot import) or give "
                "a registry image name."
            )
    return list(dict.fromkeys(problems))


def _partitions() -> tuple[dict[str, dict], str]:
    try:
        r = subprocess.run(["scontrol", "-o", "show", "partition"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, str(exc)
    if r.returncode != 0:
        return {}, (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
    out: dict[str, dict] = {}
    for line in r.stdout.splitlines():
        f = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" in f:
            out[f["PartitionName"]] = {
                "default": f.get("Default") == "YES",
                "nodes": int(f.get("TotalNodes", "0") or 0),
                "max_nodes": f.get("MaxNodes", "UNLIMITED"),
                "max_time": f.get("MaxTime", "UNLIMITED"),
                "state": f.get("State", "UP"),
                "cpus": _max_cpus(f["PartitionName"]),
            }
    return out, ""


def _max_cpus(partition: str) -> int:
    r = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%c"], capture_output=True, text=True)
    return max((int(x) for x in r.stdout.split() if x.isdigit()), default=0)


def _minutes(slurm_time: str) -> float | None:
    """Slurm's [days-]hours:minutes:seconds (or minutes) -> minutes; None = unlimited."""
    if slurm_time in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = slurm_time.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if len(parts) == 1:
        m = parts[0]
    else:
        parts = [0] * (3 - len(parts)) + parts
        m = parts[0] * 60 + parts[1] + parts[2] // 60
    return m + int(days or 0) * 24 * 60


def _fit(plan: Plan, name: str, part: dict) -> list[str]:
    out = []
    if part["state"] != "UP":
        out.append(f"cluster.partition={name!r} is {part['state']}. Fix: use a partition that is UP.")
    need = max((sp.nodes for sp in plan.stages if sp.run), default=1)
    cap = part["nodes"] if part["max_nodes"] == "UNLIMITED" else min(part["nodes"], int(part["max_nodes"]))
    if need > cap:
        out.append(
            f"cluster.nodes={plan.cfg.cluster.nodes}: partition {name!r} can never give {need} nodes (it has "
            f"{part['nodes']}, MaxNodes {part['max_nodes']}). Fix: set cluster.nodes to at most {cap} (and a "
            f"parallel layout that fits), or choose a bigger partition."
        )
    limit = _minutes(part["max_time"])
    for sp in plan.stages:
        cpus = resources(plan.cfg, sp.stage).cpus
        if sp.run and part["cpus"] and cpus > part["cpus"]:
            out.append(
                f"cluster.resources.{sp.stage.value}.cpus={cpus}: the nodes of partition {name!r} have at most "
                f"{part['cpus']} CPUs. Fix: set cluster.resources.{sp.stage.value}.cpus={part['cpus']} (or 0 for "
                "a whole node)."
            )
        t = resources(plan.cfg, sp.stage).time_min
        if sp.run and limit is not None and t > limit:
            out.append(
                f"cluster.resources.{sp.stage.value}.time_min={t}: partition {name!r} allows at most "
                f"{limit:g} minutes (MaxTime {part['max_time']}). Fix: set cluster.resources.{sp.stage.value}."
                f"time_min={int(limit)} (training requeues itself at the limit and resumes)."
            )
    return out


def _writable_dir(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` if we cannot create/write `path` under it, else None."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return None if os.access(p, os.W_OK | os.X_OK) and p.is_dir() else p


def _folders(plan: Plan) -> list[str]:
    out = []
    for key, path in (("run_dir", plan.run_dir), ("cluster.cache_dir", paths.cache_dir(plan.cfg))):
        bad = _writable_dir(path)
        if bad is not None:
            out.append(
                f"{key}: {path} cannot be created or written ({bad} is not a writable folder). Fix: set {key} to a "
                "folder on a shared file system that you can write and every node sees."
            )
    return out
