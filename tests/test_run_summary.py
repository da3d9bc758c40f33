"""The end-of-run summary (launcher/runfolder.py): any train summary (0 steps, missing or None fields, an old
status file) prints; numbers are formatted; validation loss shows; a data-only run lists no checkpoints or
TensorBoard."""

from __future__ import annotations

import json

import pytest

from launcher.compose import compose
from launcher.plan import make_plan
from launcher.runfolder import print_summary


def _plan(tmp_path, monkeypatch, *overrides):
    monkeypatch.setenv("TRAINIUM_LAUNCHER_CACHE", str(tmp_path / "cache"))
    return make_plan(compose(list(overrides)), tmp_path / "run")


def _status(plan, stage: str, **fields) -> None:
    path = plan.run_dir / "stages" / stage / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


@pytest.mark.parametrize(
    "summary",
    [
        {"steps": 0, "step": 200, "max_steps": 20, "loss_first": None, "loss_last": None, "tokens_per_s": None},
        {"loss_first": 7.1},  # an old or partial status file
        {"loss_first": None, "loss_last": 2.0, "val_loss": None, "val_loss_initial": 7.0},
        {"loss_first": float("nan"), "loss_last": "x", "steps": "3", "tokens_per_s": True},
        {},
    ],
)
def test_summary_prints_whatever_the_train_summary_holds(tmp_path, monkeypatch, capsys, summary):
    plan = _plan(tmp_path, monkeypatch)
    _status(plan, "train", state="completed", summary=summary)
    print_summary(plan, 0)
    out = capsys.readouterr().out
    assert "train" in out and "run folder" in out
    if summary.get("steps") == 0:
        assert "0 steps this run (at step 200 of 20)" in out, out


def test_summary_formats_numbers_and_shows_validation(tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path, monkeypatch)
    summ = {
        "steps": 200,
        "loss_first": 7.677430629730225,
        "loss_last": 2.61234567,
        "val_loss_initial": 7.70001234,
        "val_loss": 4.91234567,
        "tokens_per_s": 12345.678,
        "resumed_from": None,
    }
    _status(plan, "train", state="completed", summary=summ)
    print_summary(plan, 0)
    out = capsys.readouterr().out
    assert "loss 7.677 -> 2.612 over 200 steps" in out, out
    assert "validation loss 7.700 -> 4.912" in out and "12,346 tokens/s" in out, out
    assert "7.677430629730225" not in out and "resumed from" not in out


def test_data_only_summary_has_no_checkpoint_or_tensorboard_lines(tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path, monkeypatch, "stages=[data]")
    assert [sp.stage.value for sp in plan.stages] == ["data"]
    _status(plan, "data", state="completed", summary={})
    print_summary(plan, 0)
    out = capsys.readouterr().out
    assert "checkpoints:" not in out and "tensorboard" not in out, out
    assert "dataset:" in out and "status later" in out
