"""Bad input to a real training process: one clear paragraph, exit code 2, nothing half-written."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from checkpoint import train_state as ckpt
from launcher.job import EXIT_USER_ERROR
from tests.helpers.training import checkpoint_compatibility, run_job, small_config, status

pytestmark = pytest.mark.slow  # training runs (subprocesses): `pytest --full`


@pytest.fixture(scope="module")
def stopped_run(prepared, tmp_path_factory):
    """A run stopped after 4 steps with checkpoints at steps 2 and 4 (copied by each test)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    proc = run_job(run_dir, small_config(prepared, steps_this_run=4, checkpoint_interval=2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _error(proc, run_dir) -> str:
    """The process failed as a user error: exit 2, no traceback, and one paragraph (one line, ending with the
    fix) that is both the last thing on stderr and the `error` of the stage status."""
    assert proc.returncode == EXIT_USER_ERROR, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    message = status(run_dir)["error"]
    assert "\n" not in message and message.endswith(".") and 80 < len(message) < 1500, message
    assert proc.stderr.rstrip().endswith(f"[train] error: {message}")
    return proc.stderr


def test_corrupt_shard_is_named(prepared, stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path)
    shard = run_dir / "checkpoints" / "step_4" / "optim" / "dp_rank_00_tp_rank_00_pp_rank_00.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    err = _error(run_job(run_dir, small_config(prepared, steps_this_run=4, checkpoint_interval=2)), run_dir)
    assert f"The checkpoint {run_dir / 'checkpoints' / 'step_4'} is corrupt: {shard} does not match its sha256" in err
    assert "Delete" in err and "resume from the checkpoint before it" in err
    assert status(run_dir)["state"] == "failed"
    # Following the advice works: without step_4 the run resumes from step_2.
    shutil.rmtree(run_dir / "checkpoints" / "step_4")
    proc = run_job(run_dir, small_config(prepared, steps_this_run=1, checkpoint_interval=2))
    assert proc.returncode == 0 and f"resumed from {run_dir / 'checkpoints' / 'step_2'}" in proc.stdout


def test_truncated_file_and_unreadable_metadata_are_named(prepared, stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path)
    step = run_dir / "checkpoints" / "step_4"
    model = step / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt"
    model.write_bytes(model.read_bytes()[:100])
    err = _error(run_job(run_dir, small_config(prepared, steps_this_run=1)), run_dir)
    assert f"{model} has 100 bytes, the manifest says" in err
    (step / ckpt.METADATA).write_text("{ not json")
    err = _error(run_job(run_dir, small_config(prepared, steps_this_run=1)), run_dir)
    assert f"The checkpoint {step} is corrupt: {step / ckpt.METADATA} cannot be read" in err


def test_checkpoint_of_another_model_says_what_differs(prepared, stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path)
    cfg = small_config(prepared, steps_this_run=1)
    cfg.model.num_hidden_layers = 3
    cfg.model.intermediate_size = 192
    err = _error(run_job(run_dir, cfg), run_dir)
    assert "different model or parallel layout" in err
    assert "model.num_hidden_layers: checkpoint 2, config 3" in err
    assert "model.intermediate_size: checkpoint 128, config 192" in err


def test_missing_dataset_stops_before_writing_anything(prepared, tmp_path):
    run_dir = tmp_path / "run"
    cfg = small_config(prepared)
    cfg.data.output_dir = str(tmp_path / "no-such-dataset")
    err = _error(run_job(run_dir, cfg), run_dir)
    assert f"The prepared dataset {tmp_path / 'no-such-dataset'} " in err and "Run the data stage first" in err
    # The job runner makes the checkpoints folder (and records the config training is made from there); the loop
    # stopped before writing a checkpoint or a TensorBoard event into it.
    assert not list((run_dir / "checkpoints").glob("step_*")) and not (run_dir / "tensorboard").exists()


def test_checkpoint_of_another_layout_says_what_differs(prepared, stopped_run):
    """In-process (a tp=2 rerun would need two processes just to read one error)."""
    path = ckpt.latest(stopped_run / "checkpoints")
    meta = ckpt.read_metadata(path)
    cfg = small_config(prepared)
    ckpt.check_compatible(path, meta, checkpoint_compatibility(cfg))
    other = replace(cfg, parallel=replace(cfg.parallel, tensor_parallel_degree=2, data_parallel_degree=2))
    with pytest.raises(
        ValueError,
        match=r"parallel.data_parallel_degree: checkpoint 1, config 2; "
        r"parallel.tensor_parallel_degree: checkpoint 1, config 2",
    ):
        ckpt.check_compatible(path, meta, checkpoint_compatibility(other))


def test_nan_loss_names_step_and_last_good_checkpoint(prepared, tmp_path):
    run_dir = tmp_path / "run"
    cfg = small_config(prepared, checkpoint_interval=1)
    cfg.optim.lr = 1e30
    cfg.optim.min_lr = 0.0
    err = _error(run_job(run_dir, cfg), run_dir)
    good = ckpt.latest(run_dir / "checkpoints")
    assert good is not None
    step = int(good.name.split("_")[1]) + 1
    assert (
        f"Training diverged: the loss is nan at step {step}" in err or "Training diverged: the gradient norm is" in err
    )
    assert f"at step {step}" in err and f"the last good checkpoint is {good}" in err
    assert "Lower optim.lr" in err
