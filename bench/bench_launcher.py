"""Launcher wall times, printed as a table of ratios against references measured in the same run.

  python bench/bench_launcher.py            70B dry run vs `python -c "import hydra"` (median of N fresh processes)
  python bench/bench_launcher.py --default  also the no-argument default from a clean state, then a rerun

Targets (issue 3): dry run < 0.5 s and < 3x the bare Hydra import.
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
DRY_70B = ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod", "dry_run=true"]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return took


def series(cmd: list[str], n: int, cwd: Path, env: dict[str, str]) -> list[float]:
    timed(cmd, cwd, env)  # warm-up: page cache and .pyc files
    return [timed(cmd, cwd, env) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7, help="fresh processes per series (median reported)")
    ap.add_argument("--default", action="store_true", help="also time the embedded default, cold then warm")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-launcher-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAINIUM_LAUNCHER_CACHE": str(tmp / "cache")}
    # As a user's interpreter runs it: bytecode cached by the warm-up (an environment that disables the cache
    # would time compiling every module from source, which grows with the code, not with what it does).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    py = sys.executable
    hydra = series([py, "-c", "import hydra"], args.n, tmp, env)
    dry = series([py, "-m", "launcher", *DRY_70B], args.n, tmp, env)
    rows = [
        ("python -c 'import hydra' (reference)", hydra, 1.0),
        (
            "70B dry run (+model=llama3_70b parallel=tp32_pp8 cluster=hyperpod)",
            dry,
            statistics.median(dry) / statistics.median(hydra),
        ),
    ]
    if args.default:
        cold = timed([py, "-m", "launcher"], tmp, env)
        warm = timed([py, "-m", "launcher"], tmp, env)
        rows += [
            ("default run, clean state", [cold], cold / statistics.median(hydra)),
            ("default run again (everything reused)", [warm], warm / statistics.median(hydra)),
        ]
    print(f"{'what':<72} {'median s':>9} {'min s':>7} {'max s':>7} {'x hydra':>8}")
    for name, xs, ratio in rows:
        print(f"{name:<72} {statistics.median(xs):>9.3f} {min(xs):>7.3f} {max(xs):>7.3f} {ratio:>8.2f}")
    version = sys.version.split()[0]
    print(f"\n{args.n} fresh processes per series after one warm-up; {os.cpu_count()} CPUs; python {version}")
    print("targets: 70B dry run < 0.5 s and < 3x the bare hydra import")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
