"""`status [RUN]` and `cancel RUN`: a run's stages, from the run folder and, for Slurm runs, the scheduler.

Slurm state comes from `sacct` where the cluster has accounting, else from `squeue` (queued and running jobs) and
`scontrol show job` (jobs that ended in the last MinJobAge seconds), else from the stage's own status.json. Per
stage: state, job id, requeue count, elapsed time, last step and loss, latest checkpoint, last log lines; a job
that Slurm cancelled because a stage it depends on failed is shown as such.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.runfolder import latest_run, read_status

EXIT_USER_ERROR = 2
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED", "RESIZING"}
STEP_RE = re.compile(r"\[train\] step\s+(\d+)/(\d+) \| loss ([\d.naninf]+)")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _resolve(args: list[str]) -> Path:
    """A run folder; a runs folder (its latest run of this user); or, with no argument or with overrides
    (`cluster=hyperpod`), the latest run of this user under the composed config's cluster.runs_dir."""
    # A sweep point's folder is named like an override (optim.lr=0.001): an existing folder is a folder.
    if args and ("=" not in args[0] or Path(args[0]).expanduser().is_dir()):
        path = Path(args[0]).expanduser()
        if (path / "run.json").is_file():
            return path
        latest = latest_run(path) if path.is_dir() else None
        if latest is None:
            raise ValueError(
                f"{args[0]} is not a run folder (no run.json in it), nor a runs folder with a run of yours. "
                f"Fix: pass the folder the launcher printed as 'run folder', e.g. runs/tiny-none-local."
            )
        return latest
    from launcher.compose import ConfigError, compose

    try:
        runs_dir = Path(os.path.expanduser(compose(args).cfg.cluster.runs_dir))
    except ConfigError as err:
        raise ValueError(" ".join(err.problems)) from None
    latest = latest_run(runs_dir)
    if latest is None:
        raise ValueError(
            f"there is no run of yours under {runs_dir} yet (cluster.runs_dir). Fix: start a run with "
            f"`python -m launcher`, pass a run folder (python -m launcher status RUN), or the cluster whose "
            f"runs folder to look in (python -m launcher status cluster=hyperpod)."
        )
    return latest


def _job(run_dir: Path, stage: str) -> dict:
    try:
        return json.loads((run_dir / "stages" / stage / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def _run(args: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_view(ids: list[str]) -> tuple[dict[str, dict], str]:
    """{job id: {state, reason, elapsed, requeues, exit_code}} and where it came from (sacct | squeue/scontrol)."""
    if not ids:
        return {}, ""
    r = _run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(ids), "-o", "JobID,State,ExitCode,Elapsed,Reason"])
    if r is not None and r.returncode == 0:
        out: dict[str, dict] = {}
        for line in r.stdout.splitlines():
            jid, state, code, elapsed, reason = (line.split("|") + [""] * 5)[:5]
            row = out.setdefault(jid, {"requeues": 0})
            if state.startswith("REQUEUED") or state.startswith("NODE_FAIL") or state.startswith("PREEMPTED"):
                row["requeues"] += 1
            row.update(state=state.split()[0], exit_code=code, elapsed=elapsed, reason=reason)
        # Jobs not yet eligible (held, or waiting on a dependency) are not in sacct yet: the controller knows them.
        missing = [j for j in ids if j not in out]
        return {**out, **_scontrol(missing)}, "sacct"
    return _scontrol(ids), "squeue/scontrol"


def _scontrol(ids: list[str]) -> dict[str, dict]:
    out = {}
    for jid in ids:
        r = _run(["scontrol", "-o", "show", "job", jid])
        if r is None or r.returncode != 0 or not r.stdout.strip():
            continue
        f = dict(tok.split("=", 1) for tok in r.stdout.split() if "=" in tok)
        out[jid] = {
            "state": f.get("JobState", ""),
            "reason": f.get("Reason", ""),
            "elapsed": f.get("RunTime", ""),
            "requeues": int(f.get("Restarts", "0") or 0),
            "exit_code": f.get("ExitCode", ""),
        }
    return out


def _train_progress(log: Path) -> tuple[str, str]:
    try:
        text = log.read_text(errors="replace")[-200_000:]
    except OSError:
        return "", ""
    found = STEP_RE.findall(text)
    if not found:
        return "", ""
    step, of, loss = found[-1]
    return f"{step} of {of}", loss


def _tail(log: Path, n: int = 3) -> list[str]:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return []
    return lines[-n:]


def _run_config(run_dir: Path):
    """The run's resolved config (None when config.yaml cannot be read: status then shows the status files)."""
    from launcher.job import load_config

    try:
        return load_config(run_dir)
    except Exception:
        return None


def _output_state(run_dir: Path, stage: str, cfg) -> tuple[str, dict]:
    """What the stage's output on disk is for the run's config: complete (with the marker's summary), stale (made
    from another config: the next run rebuilds it), or nothing known."""
    from core.marker import is_complete, read_marker
    from core.paths import final_dir
    from core.stages import Stage

    if cfg is None:
        return "", {}
    st = Stage(stage)
    done, _ = is_complete(st, cfg, run_dir)
    marker = read_marker(final_dir(st, cfg, run_dir))
    if done:
        return "complete", (marker or {}).get("summary") or {}
    return ("stale", {}) if marker else ("", {})


def stage_rows(run_dir: Path) -> tuple[list[dict], str]:
    meta = json.loads((run_dir / "run.json").read_text())
    jobs = {e["stage"]: _job(run_dir, e["stage"]) for e in meta["stages"]}
    view, source = slurm_view([j["job_id"] for j in jobs.values() if j.get("job_id")])
    cfg = _run_config(run_dir)  # read once: every stage's output is judged against it
    rows = []
    for entry in meta["stages"]:
        stage = entry["stage"]
        s, j = read_status(run_dir, stage), jobs[stage]
        state = s.get("state", "pending" if entry.get("run", True) else "skipped")
        v = view.get(j.get("job_id", ""), {})
        note = s.get("error") or ""
        if state == "running" and s.get("pgid") and not _alive(int(s["pgid"])):
            state = "died"  # killed (e.g. kill -9) or crashed before it could record an outcome
        summary = s.get("summary") or {}
        if state in ("skipped", "completed", "stopped", "pending"):
            # The outputs, not the last invocation: a stage skipped by a rerun is complete, with its summary.
            out_state, out_summary = _output_state(run_dir, stage, cfg)
            if out_state == "complete":
                state, summary = "complete", out_summary or summary
            elif out_state == "stale" and state != "stopped":
                state, note = "stale", note or "its output was made from another config; the next run rebuilds it"
        slurm_state = v.get("state", "")
        if slurm_state in ACTIVE:
            state = slurm_state.lower()
            if slurm_state == "PENDING" and v.get("reason"):
                note = f"waiting: {v['reason']}"
        elif (slurm_state == "CANCELLED" and state in ("pending", "skipped")) or (
            slurm_state == "CANCELLED" and v.get("reason", "").startswith("Dependency")
        ):
            state = "cancelled"
            failed = [d for d in entry.get("after", []) if read_status(run_dir, d).get("state") == "failed"]
            note = "never ran: " + (
                f"the stage it depends on ({', '.join(failed)}) failed" if failed else "cancelled before it started"
            )
        elif slurm_state in ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED") and state in (
            "running",
            "pending",
        ):
            state = slurm_state.lower()
        requeue = _read_json(run_dir / "stages" / stage / "requeue.json").get("attempts", [])
        if requeue and not requeue[-1]["requeued"] and not note:
            note = requeue[-1]["why"]
        log = Path(j["log"]) if j.get("log") else Path(s.get("log", "") or "/nonexistent")
        step, loss = _train_progress(log) if stage == "train" else ("", "")
        rows.append(
            {
                "stage": stage,
                "state": state,
                "job_id": j.get("job_id", ""),
                "slurm_state": slurm_state,
                "requeues": max(v.get("requeues", 0), int(s.get("restart") or 0)),
                "elapsed": v.get("elapsed", ""),
                "started": s.get("started") or "",
                "ended": s.get("ended") or "",
                "output": entry["output"],
                "log": str(log) if log.exists() else "",
                "error": note,
                "step": step,
                "loss": loss,
                "checkpoint": _latest_checkpoint(run_dir) if stage == "train" else "",
                "tail": _tail(log),
                "summary": summary,
            }
        )
    return rows, source


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _latest_checkpoint(run_dir: Path) -> str:
    from checkpoint import steps

    found = steps.complete_steps(run_dir / "checkpoints")
    return str(found[-1][1]) if found else ""


def show(run_dir: Path) -> None:
    rows, source = stage_rows(run_dir)
    print(f"run folder: {run_dir}" + (f"   (Slurm state from {source})" if source else ""))
    print(f"  {'stage':<8} {'state':<11} {'job':<9} {'requeues':<8} {'elapsed':<10} output")
    for r in rows:
        print(
            f"  {r['stage']:<8} {r['state']:<11} {r['job_id']:<9} {r['requeues']:<8} {r['elapsed']:<10} {r['output']}"
        )
        if r["error"]:
            print(f"           why: {r['error']}")
        if r["stage"] == "train" and r["state"] == "complete" and isinstance(r["summary"], dict):
            from launcher.runfolder import train_summary_text

            text = train_summary_text(r["summary"])
            if text:
                print(f"           {text}")
        elif r["step"]:
            print(f"           {'at' if r['state'] == 'running' else 'last'} step {r['step']}, loss {r['loss']}")
        if r["checkpoint"]:
            print(f"           latest checkpoint: {r['checkpoint']}")
        if r["log"]:
            print(f"           log: {r['log']}")
            for line in r["tail"] if r["state"] not in ("complete", "completed", "skipped") else []:
                print(f"             | {line[:160]}")


def cancel(run_dir: Path) -> int:
    rows, _ = stage_rows(run_dir)
    done: list[str] = []
    queued = [r for r in rows if r["job_id"] and r["slurm_state"] in ACTIVE]
    # Pending jobs first (so nothing starts on an unfinished model), then the running ones.
    for r in sorted(queued, key=lambda r: r["slurm_state"] == "RUNNING"):
        folder = run_dir / "stages" / r["stage"]
        (folder / "cancel_requested").write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
        if r["stage"] == "train" and r["slurm_state"] == "RUNNING":
            # SIGTERM to the job's processes: the training loop checkpoints at the step boundary and exits.
            _run(["scancel", "--signal=TERM", r["job_id"]])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and read_status(run_dir, "train").get("state") == "running":
                time.sleep(0.5)
        _run(["scancel", r["job_id"]])
        done.append(f"{r['stage']} (job {r['job_id']}, was {r['slurm_state'].lower()})")
    for r in rows:
        s = read_status(run_dir, r["stage"])
        if r["state"] == "running" and s.get("pgid") and not r["job_id"] and _alive(int(s["pgid"])):
            os.killpg(int(s["pgid"]), signal.SIGTERM)  # a local run
            done.append(f"{r['stage']} (process group {s['pgid']}, SIGTERM: checkpoints first)")
    if done:
        print(f"cancelled in {run_dir}:\n" + "\n".join(f"  {d}" for d in done))
    else:
        print(f"nothing to cancel in {run_dir}: no stage is queued or running.")
    return 0


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "cancel" and (len(rest) != 1 or ("=" in rest[0] and not Path(rest[0]).expanduser().is_dir())):
            raise ValueError("cancel needs the run folder: python -m launcher cancel RUN.")
        if len(rest) > 1 and not all("=" in a for a in rest):
            raise ValueError(f"{cmd} takes at most one run folder, got {' '.join(rest)}.")
        run_dir = _resolve(rest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if cmd == "cancel":
        return cancel(run_dir)
    show(run_dir)
    return 0
