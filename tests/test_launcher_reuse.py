"""A rerun in a run folder whose training was made with another training config is refused at plan time (exit
2, nothing written) with the differing keys and the two ways on; `trainer.resume_changed=true` continues with the
new settings (really used: the learning rate of the next step is the new schedule's) and the marker keeps the
history; `force=true` starts training again, removing only what the trainer wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launcher.compose import compose
from launcher.plan import make_plan
from tests.helpers.cli import run_cli, tree

SMALL = [
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "trainer.max_steps=4",
    "trainer.global_batch_size=2",
    "trainer.micro_batch_size=2",
    "trainer.checkpoint_interval=0",
    "trainer.eval_interval=0",
    "trainer.log_interval=1",
    "optim.warmup_steps=2",
    "run_dir=run",
    "stages=[data,train]",
]


def _refusals(*extra: str) -> list[str]:
    c = compose([*SMALL, *extra])
    return make_plan(c, Path("run")).refusals


def _default(key: str):
    """The value the tiny recipe gives `key` (what the first run used)."""
    from omegaconf import OmegaConf

    from launcher.compose import compose

    return OmegaConf.select(OmegaConf.structured(compose([]).cfg), key)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_changed_config_is_refused_continued_on_request_or_restarted(isolated):
    first = run_cli(SMALL, cwd=isolated)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    ckpts = isolated / "run" / "checkpoints"
    assert (ckpts / "step_4" / "COMPLETE").is_file() and (ckpts / "_inputs.json").is_file()

    # Every kind of training-relevant change is refused, naming the key with its old and new value.
    for extra, shown in [
        (["optim.lr=1e-3"], "optim.lr: 0.004 -> 0.001"),
        (["trainer.max_steps=2"], "trainer.max_steps: 4 -> 2"),
        (["data.val_fraction=0.2"], f"data.val_fraction: {_default('data.val_fraction')} -> 0.2"),  # a new dataset
        (["model.init=pretrained", "model.pretrained_path=acme/x"], "model.init: 'scratch' -> 'pretrained'"),
    ]:
        (refusal,) = _refusals(*extra)
        assert shown in refusal and "run_dir=run-new" in refusal and "trainer.resume_changed=true" in refusal
    # A different layout cannot be continued at all, not even on request.
    (refusal,) = _refusals("parallel=cpu_tp2", "trainer.resume_changed=true")
    assert "parallel.tensor_parallel_degree: checkpoint 1, config 2" in refusal and "force=true" in refusal
    # Settings that change no weight are not a reason to refuse.
    assert _refusals("trainer.keep_last=5") == []

    before = _snapshot(isolated / "run")
    proc = run_cli([*SMALL, "optim.lr=1e-3"], cwd=isolated)
    assert proc.returncode == 2 and "optim.lr: 0.004 -> 0.001" in proc.stderr, proc.stderr
    assert _snapshot(isolated / "run") == before  # not even config.yaml was rewritten

    # Continued training with a new peak lr and a longer schedule: steps 5-6 use the new schedule.
    more = run_cli([*SMALL, "optim.lr=1e-3", "trainer.max_steps=6", "trainer.resume_changed=true"], cwd=isolated)
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr[-2000:]
    assert "with changed settings (trainer.resume_changed=true)" in more.stdout
    lrs = dict(re.findall(r"\[train\] step (\d+)/6 \| loss [0-9.]+ \| lr ([0-9.e+-]+)", more.stdout))
    from train.optim import lr_at

    new = compose([*SMALL, "optim.lr=1e-3", "trainer.max_steps=6"]).cfg.optim
    assert sorted(lrs) == ["5", "6"] and float(lrs["5"]) == pytest.approx(lr_at(4, new, 6), rel=1e-3)
    marker = json.loads((ckpts / "_stage.json").read_text())
    assert marker["inputs"]["optim"]["lr"] == 1e-3 and marker["inputs"]["trainer"]["max_steps"] == 6
    (change,) = marker["history"]
    assert change["until_step"] == 4 and change["inputs"]["optim"]["lr"] == 4e-3
    assert change["changed"] == {"optim.lr": [4e-3, 1e-3], "trainer.max_steps": [4, 6]}
    # The same command again: the config matches what the checkpoints now record, so it is simply complete.
    assert _refusals("optim.lr=1e-3", "trainer.max_steps=6") == []

    # force=true: training starts again from step 0; a file of the user's in checkpoints/ stays.
    (ckpts / "notes.txt").write_text("mine")
    again = run_cli([*SMALL, "force=true"], cwd=isolated)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "starts training again from step 0" in again.stdout and "starting from step 0" in again.stdout
    assert "resumed from" not in again.stdout
    assert sorted(tree(ckpts)) == sorted(["_inputs.json", "_stage.json", "notes.txt", *tree_of_step(ckpts, 4)]), tree(
        ckpts
    )
    marker = json.loads((ckpts / "_stage.json").read_text())
    assert marker["inputs"]["optim"]["lr"] == 4e-3 and "history" not in marker


def tree_of_step(ckpts: Path, step: int) -> list[str]:
    return [f"step_{step}", *(f"step_{step}/{p}" for p in tree(ckpts / f"step_{step}"))]
