"""Training throughput on CPU: our train step vs transformers' LlamaForCausalLM, printed as one table.

  python bench/bench_train.py              tiny and ~100M models (median of 3+ fresh processes each) + startup
  python bench/bench_train.py --quick      smoke run: tiny model only, 3 runs of 2 timed steps, 1 startup run
  python bench/bench_train.py --profile    torch.profiler top ops of one step, ours then HF (--sizes to pick)

"Ours" is the `torch` backend's real `train_step` (model/llama3.py, one-process gloo group, forward + loss +
backward + global grad norm + clipping + AdamW + scheduler + the per-step all-reduce of loss/norm/stop flag).
"HF" is `LlamaForCausalLM(attn_implementation="sdpa")` with `labels=input_ids`, `clip_grad_norm_(1.0)` and the
same AdamW (same parameter groups, betas, eps, weight decay). Same config, batch, sequence length, dtype
(fp32 by default; bf16 = autocast in both) and thread count; every run is a fresh process, ours and HF
interleaved so machine noise hits both alike; warm-up steps are not timed. The ratio is ours / HF on the medians
(target >= 0.95). "startup" is the real train stage (`python -m launcher.job RUN train` on a prepared dataset):
wall time from process start until step 1 is logged, and the loop's own `startup_seconds` (run() to first
step), next to `python -c "import torch"` as the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.config import ModelConfig  # noqa: E402  (torch-free)

# name -> (model, micro batch, seq_len). ~100M: 12 x 768 blocks (75M) + 16k vocabulary in and out (25M).
SIZES: dict[str, tuple[ModelConfig, int, int]] = {
    "tiny": (ModelConfig(), 8, 256),
    "100m": (
        ModelConfig(
            name="bench-100m",
            vocab_size=16384,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        ),
        2,
        512,
    ),
}


def _config(size: str, threads: int, precision: str, steps: int):
    from core.config import JobConfig
    from train.config import Precision

    model, batch, seq = SIZES[size]
    cfg = JobConfig(model=replace(model))
    cfg.data.seq_len = seq
    cfg.trainer.micro_batch_size = cfg.trainer.global_batch_size = batch
    cfg.trainer.max_steps = steps
    cfg.trainer.num_threads = threads
    cfg.trainer.precision = Precision(precision)
    return cfg


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def job(impl: str, size: str, steps: int, warmup: int, threads: int, precision: str, profile: bool) -> dict:
    """One measurement in this (fresh) process; returns tokens/s of the timed steps."""
    import torch

    cfg = _config(size, threads, precision, steps + warmup + 1)
    torch.set_num_threads(threads)
    _, batch, seq = SIZES[size]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, cfg.model.vocab_size, (batch, seq), generator=gen)
    if impl == "ours":
        from train.backend_torch import TorchBackend
        from train.stage_train import train_job

        backend = TorchBackend(train_job(cfg, Path("unused-run")))
        backend.setup()
        backend.build(resuming=False)
        params = _params(backend.model)

        def step() -> float:
            return backend.train_step([ids], False).loss
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        from checkpoint.hf_adapter import to_hf_config
        from train.optim import build_optimizer

        hf_cfg = LlamaConfig(**to_hf_config(cfg.model), attn_implementation="sdpa")
        torch.manual_seed(cfg.trainer.seed)
        model = LlamaForCausalLM(hf_cfg)
        assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
        model.train()
        opt = build_optimizer(model, cfg.optim)
        params = _params(model)
        bf16 = precision == "bf16"

        def step() -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

    for _ in range(warmup):
        step()
    out: dict = {"params": params}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            step()
        out["table"] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
        return out
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    took = time.perf_counter() - t0
    out.update(tokens_per_s=batch * seq * steps / took, loss=loss)
    return out


def run_job(impl: str, size: str, args: argparse.Namespace, profile: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)  # ours runs as one process with its own in-memory group
    spec = dict(
        impl=impl,
        size=size,
        steps=args.steps if size == "tiny" else args.big_steps,
        warmup=args.warmup,
        threads=args.threads,
        precision=args.precision,
        profile=profile,
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(spec)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"{impl} {size} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup(args: argparse.Namespace, n: int) -> tuple[list[float], list[float], list[float]]:
    """(process start -> step 1 logged, loop startup_seconds, `import torch`) over n fresh train stages."""
    from omegaconf import OmegaConf

    from core.config import JobConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

    def write(run_dir: Path) -> None:
        cfg = JobConfig()
        cfg.cluster.cache_dir = str(tmp / "cache")
        cfg.trainer.max_steps, cfg.trainer.log_interval = 2, 1
        cfg.trainer.checkpoint_interval = cfg.trainer.eval_interval = 0
        cfg.trainer.num_threads = args.threads
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    write(tmp / "data-run")
    subprocess.run(
        [sys.executable, "-m", "launcher.job", str(tmp / "data-run"), "data"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    walls, loops, imports = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
        imports.append(time.perf_counter() - t0)
        run_dir = tmp / f"run{i}"
        write(run_dir)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.job", str(run_dir), "train"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        first = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if first is None and line.startswith("[train] step 1/"):
                first = time.perf_counter() - t0
        if proc.wait() != 0 or first is None:
            raise SystemExit(f"the train stage failed in {run_dir}")
        summary = json.loads((run_dir / "stages" / "train" / "status.json").read_text())["summary"]
        walls.append(first)
        loops.append(summary["startup_seconds"])
    return walls, loops, imports


def _fmt(values: list[float], digits: int = 0) -> tuple[str, str]:
    med = statistics.median(values)
    return f"{med:,.{digits}f}", f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny only, 3 short runs, 1 startup run")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top ops of one step instead")
    ap.add_argument("--sizes", default=None, help="comma-separated: tiny,100m (default: both; --quick: tiny)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per implementation and size (>= 3)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run, tiny model")
    ap.add_argument("--big-steps", type=int, default=3, help="timed steps per run, ~100M model")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (lazy optimizer state, caches)")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16), help="torch intra-op threads")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--startup-runs", type=int, default=3, help="fresh train stages timed (0: skip)")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        spec = json.loads(args.job)
        print(json.dumps(job(**spec)))
        return
    if args.quick:
        args.runs, args.steps, args.warmup, args.startup_runs = 3, 2, 1, min(1, args.startup_runs)
    sizes = (args.sizes or ("tiny" if args.quick else "tiny,100m")).split(",")
    if args.profile:
        for size in sizes:
            for impl in ("ours", "hf"):
                res = run_job(impl, size, args, profile=True)
                print(f"\n== {impl} | {size} ({res['params'] / 1e6:.1f}M parameters) | one training step ==")
                print(res["table"])
        return
    rows = []
    for size in sizes:
        got: dict[str, list[float]] = {"ours": [], "hf": []}
        params = {}
        for _ in range(max(3, args.runs)):
            for impl in ("ours", "hf"):
                res = run_job(impl, size, args)
                got[impl].append(res["tokens_per_s"])
                params[impl] = res["params"]
        assert params["ours"] == params["hf"], params
        _, batch, seq = SIZES[size]
        ratio = statistics.median(got["ours"]) / statistics.median(got["hf"])
        desc = f"{size} ({params['ours'] / 1e6:.1f}M params, batch {batch}x{seq})"
        rows.append((f"{desc} transformers sdpa", *_fmt(got["hf"]), "1.00"))
        rows.append((f"{desc} ours", *_fmt(got["ours"]), f"{ratio:.2f}"))
    head = ("measurement", "median", "min-max", "ratio")
    table = list(rows)
    if args.startup_runs > 0:
        walls, loops, imports = startup(args, args.startup_runs)
        table += [
            ("python -c 'import torch' (s, reference)", *_fmt(imports, 2), "1.00"),
            (
                "train stage: process start -> step 1 logged (s)",
                *_fmt(walls, 2),
                f"{statistics.median(walls) / statistics.median(imports):.2f}",
            ),
            ("train stage: loop startup_seconds (s)", *_fmt(loops, 2), ""),
        ]
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(4)]
    print(
        f"training tokens/s on CPU, {args.threads} threads, {args.precision}, "
        f"{max(3, args.runs)} runs per row (ratio: ours / transformers; startup: / import torch)"
    )
    for r in [head, *table]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
