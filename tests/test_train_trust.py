"""Issue 10's training items, each as a class of defect:
- checkpoints hold the model's own tensor names under every wrapper (DDP, FSDP2, TP), so every CPU layout the
  README offers exports, and transformers loads the export with our model's logits; old `module.`-prefixed
  checkpoints still resume and export;
- evaluation is collective on every rank whatever the number of held-out blocks (no FSDP deadlock);
- a stalled process says where it is stuck and exits (the watchdog);
- validation starts before the first step and shows in the summary; a 0-step run still summarises;
- Ctrl-C is reported as SIGINT."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import DataParallelMode
from tests.helpers.training import ROOT, env, job_command, run_job, small_config, status, tb_scalars

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

LAYOUTS = {  # the README's CPU layouts: (dp, tp, data-parallel mode)
    "none": (1, 1, "ddp"),
    "cpu_dp2": (2, 1, "ddp"),
    "cpu_tp2": (1, 2, "ddp"),
    "cpu_dp2_tp2": (2, 2, "ddp"),
    "cpu_dp2_fsdp": (2, 1, "fsdp"),
}


def _cfg(prepared, dp, tp, mode, **trainer):
    cfg = small_config(prepared, max_steps=6, checkpoint_interval=3, eval_interval=3, **trainer)
    cfg.parallel.data_parallel_degree, cfg.parallel.tensor_parallel_degree = dp, tp
    cfg.parallel.data_parallel_mode = DataParallelMode(mode)
    cfg.trainer.stall_timeout_s = 240  # a regression hangs for 4 minutes at most, then fails with a message
    return cfg


def _export(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        job_command(run_dir, "export"), env=env(), capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def _ids(cfg) -> torch.Tensor:
    return torch.randint(0, cfg.model.vocab_size, (2, cfg.data.seq_len), generator=torch.Generator().manual_seed(7))


def _check_export_logits(run_dir: Path, cfg) -> None:
    """transformers on the exported folder vs our model built from the checkpoint's shards: same logits."""
    from transformers import LlamaForCausalLM

    from checkpoint.export import latest_step, merge_torch_shards
    from model import llama3

    ours = llama3.build(cfg.model)
    ours.load_state_dict(merge_torch_shards(latest_step(run_dir / "checkpoints"), cfg.model), strict=True)
    hf = LlamaForCausalLM.from_pretrained(run_dir / "export", torch_dtype=torch.float32).eval()
    ids = _ids(cfg)
    with torch.no_grad():
        diff = (hf(ids).logits.float() - ours.eval()(ids).float()).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_checkpoints_model_names_exports_and_reloads(prepared, tmp_path, layout):
    dp, tp, mode = LAYOUTS[layout]
    cfg = _cfg(prepared, dp, tp, mode, steps_this_run=3)
    run_dir = tmp_path / layout
    for _ in range(2):  # 3 steps, then resume for the last 3: the renamed keys load back
        proc = run_job(run_dir, cfg, procs=dp * tp, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "resumed from" in proc.stdout and status(run_dir)["summary"]["completed"]
    for shard in (run_dir / "checkpoints" / "step_6" / "model").iterdir():
        keys = torch.load(shard, weights_only=True)
        assert "tok_embeddings.weight" in keys and not any(k.startswith("module.") for k in keys), shard
    exported = _export(run_dir)
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-5000:]
    _check_export_logits(run_dir, cfg)


def _prefix_old_style(step: Path) -> None:
    """Rewrite a checkpoint's model shards as DDP runs wrote them before the fix (`module.` keys), manifest
    included, so it is a valid checkpoint of the old format."""
    meta_path = step / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for shard in (step / "model").iterdir():
        state = torch.load(shard, weights_only=True)
        torch.save({f"module.{k}": v for k, v in state.items()}, shard)
        data = shard.read_bytes()
        meta["files"][f"model/{shard.name}"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta_path.write_text(json.dumps(meta, indent=2))


def test_checkpoint_with_the_old_ddp_prefix_resumes_and_exports(prepared, tmp_path):
    cfg = _cfg(prepared, 2, 1, "ddp", steps_this_run=3)
    run_dir = tmp_path / "old"
    proc = run_job(run_dir, cfg, procs=2, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    _prefix_old_style(run_dir / "checkpoints" / "step_3")
    proc = run_job(run_dir, cfg, procs=2, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "resumed from" in proc.stdout and status(run_dir)["summary"]["completed"]
    # Export reads the old form too (a checkpoint of a run that was never resumed after the fix).
    _prefix_old_style(run_dir / "checkpoints" / "step_6")
    exported = _export(run_dir)
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-5000:]
    _check_export_logits(run_dir, cfg)


@pytest.mark.parametrize("dp,tp,mode", [(2, 1, "fsdp"), (2, 1, "ddp"), (2, 2, "fsdp")])
def test_evaluation_is_collective_for_any_number_of_held_out_blocks(tmp_path, dp, tp, mode):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={dp * tp}"]
    cmd += [str(ROOT / "tests" / "helpers" / "eval_worker.py"), str(tmp_path), str(dp), str(tp), mode]
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), e["PYTHONPATH"]])
    proc = subprocess.Popen(
        cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("evaluation hung (a rank waited in a collective the others never joined):\n" + out[-3000:])
    assert proc.returncode == 0, out[-5000:]
    results = json.loads((tmp_path / f"eval-dp{dp}-tp{tp}-{mode}.json").read_text())
    for rows, r in results.items():
        assert r["blocks"] == r["held"], (rows, r)
        if r["held"] == 0:
            assert r["loss"] is None, (rows, r)
        else:
            assert abs(r["loss"] - r["expect"]) < 1e-5, (rows, r)


WATCHED = """
import sys, time
from train.watchdog import Watchdog
dog = Watchdog(float(sys.argv[1]), rank=0, on_stall=lambda m: open(sys.argv[2], "w").write(m)).start()
for _ in range(int(sys.argv[3])):  # beats, then stalls
    dog.beat(3, "validation")
    time.sleep(0.1)
time.sleep(float(sys.argv[4]))
dog.stop()
"""


def test_watchdog_reports_a_stall_and_exits_and_leaves_a_busy_process_alone(tmp_path):
    record = tmp_path / "stall.txt"
    t0 = time.monotonic()
    stalled = subprocess.run(
        [sys.executable, "-c", WATCHED, "1", str(record), "3", "60"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert time.monotonic() - t0 < 30
    assert stalled.returncode == 124, stalled.stderr
    assert "warning: no progress for" in stalled.stderr
    assert "no progress for 1 s at step 3 (validation) on rank 0" in stalled.stderr, stalled.stderr
    assert "trainer.stall_timeout_s" in record.read_text()
    busy = subprocess.run(
        [sys.executable, "-c", WATCHED, "1", str(record) + ".2", "30", "0"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert busy.returncode == 0 and "no progress" not in busy.stderr, busy.stderr


def test_validation_starts_before_step_one_and_the_summary_survives_zero_steps(prepared, tmp_path, capsys):
    cfg = _cfg(prepared, 1, 1, "ddp")
    run_dir = tmp_path / "val"
    proc = run_job(run_dir, cfg, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    val = tb_scalars(run_dir / "tensorboard", "val/loss")
    assert [s for s, _ in val] == [0, 3, 6], val
    summ = status(run_dir)["summary"]
    assert summ["val_loss_initial"] == pytest.approx(val[0][1], abs=1e-6)
    assert summ["val_loss"] == pytest.approx(val[-1][1], abs=1e-6)
    assert "validation loss" in proc.stdout and "loss 7.677430629730225" not in proc.stdout
    # Nothing left to do (as the docs' `trainer.steps_this_run` example after a finished run): 0 steps, a
    # summary without losses. Without its marker the stage runs again and resumes at max_steps.
    from core.marker import STAGE_MARKER as MARKER

    (run_dir / "checkpoints" / MARKER).unlink()
    proc = run_job(run_dir, cfg, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    zero = status(run_dir)["summary"]
    assert zero["steps"] == 0 and zero["loss_first"] is None
    assert zero["val_loss_initial"] == pytest.approx(summ["val_loss_initial"])  # carried by the checkpoint
    _print_summary(run_dir, capsys)


def _print_summary(run_dir: Path, capsys) -> None:
    from launcher.compose import compose
    from launcher.plan import make_plan
    from launcher.runfolder import print_summary

    plan = make_plan(compose([]), run_dir)
    print_summary(plan, 0)
    out = capsys.readouterr().out
    assert "0 steps this run (at step 6 of 6)" in out, out


def test_sigint_is_reported_as_sigint(prepared, tmp_path):
    from tests.helpers.training import start_job

    cfg = _cfg(prepared, 1, 1, "ddp")
    cfg.trainer.max_steps, cfg.trainer.checkpoint_interval = 2000, 0
    log = tmp_path / "log.txt"
    proc = start_job(tmp_path / "sigint", cfg, log)
    deadline = time.monotonic() + 240
    while "step    3/" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    out = log.read_text()
    assert rc == 75, out[-3000:]
    assert "received SIGINT (Ctrl-C)" in out and "stopped by SIGINT" in out and "SIGTERM" not in out, out[-3000:]


QUICK = [  # a small model, so that steps take milliseconds
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "trainer.max_steps=2000",
    "trainer.global_batch_size=2",
    "trainer.micro_batch_size=2",
    "trainer.checkpoint_interval=0",
    "trainer.log_interval=1",
    "stages=[data,train]",
]


def test_ctrl_c_on_the_launcher_reaches_training_as_sigint(isolated):
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *QUICK],
        cwd=isolated,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen, deadline = [], time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if "step    3/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends the launcher
    out = "".join(seen) + proc.stdout.read()
    proc.wait(timeout=120)
    assert "received SIGINT (Ctrl-C)" in out and "stopped by SIGINT" in out, out[-3000:]
    assert "SIGTERM" not in out, out[-3000:]
