"""Submission wall time: from the command to every job of the default plan queued on the local Slurm (held with
--hold so nothing runs), next to the same number of plain `sbatch --hold --wrap true` calls and
`python -c "import hydra"`, all measured in the same run (median of N rounds, interleaved).

  python bench/bench_submit.py [-n 5]      uses $SLURM_CONF if set, else starts the test cluster in a temp folder

Reported: ratio = launcher / (sbatch calls + import hydra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    cluster = None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_STEP"))}
    if "SLURM_CONF" not in env:
        from tests.helpers.slurm_cluster import SlurmCluster

        cluster = SlurmCluster(tmp / "cluster", accounting=False).start()
        env.update(cluster.env)
    env["PYTHONPATH"] = str(ROOT)
    rows: dict[str, list[float]] = {"launcher": [], "sbatch": [], "hydra": []}
    try:
        for i in range(args.n + 1):  # round 0 warms caches and is not counted
            run_dir = tmp / f"run{i}"
            cmd = [sys.executable, "-m", "launcher", "cluster=slurm", "cluster.accelerator=cpu"]
            cmd += [f"run_dir={run_dir}", f"cluster.cache_dir={tmp / 'cache'}", "cluster.sbatch_options=[--hold]"]
            t_launch, out = timed(cmd, env, tmp)
            jobs = [line.split()[2] for line in out.splitlines() if line.strip().split()[1:2] == ["job"]]
            t0 = time.perf_counter()
            plain = [
                timed(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"], env, tmp)[1].strip()
                for _ in jobs
            ]
            t_sbatch = time.perf_counter() - t0
            t_hydra, _ = timed([sys.executable, "-c", "import hydra"], env, tmp)
            subprocess.run(["scancel", *jobs, *plain], env=env, capture_output=True)
            if i:
                rows["launcher"].append(t_launch)
                rows["sbatch"].append(t_sbatch)
                rows["hydra"].append(t_hydra)
        n_jobs = len(jobs)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    ref = med["sbatch"] + med["hydra"]
    print(f"default plan: {n_jobs} jobs queued (held), median of {args.n} rounds")
    print(f"  {'what':<44} {'seconds':>8}")
    print(f"  {'python -m launcher (compose .. all queued)':<44} {med['launcher']:>8.3f}")
    print(f"  {f'{n_jobs} x sbatch --hold --wrap true':<44} {med['sbatch']:>8.3f}")
    hydra = 'python -c "import hydra"'
    print(f"  {hydra:<44} {med['hydra']:>8.3f}")
    print(f"  ratio launcher / (sbatch calls + import hydra) = {med['launcher'] / ref:.2f}")


if __name__ == "__main__":
    main()
