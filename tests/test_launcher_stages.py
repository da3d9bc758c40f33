"""The stage machinery through a real stage (download, served offline from a hub cache laid out as
huggingface_hub lays it out): marker, skip on rerun, rebuild on change, status, local executor, status CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import stages
from core.fingerprint import fingerprint
from core.marker import is_complete
from core.paths import pretrained_dir
from core.stage_status import read_status
from core.stages import Stage
from launcher import job
from launcher.compose import compose
from tests.helpers.cli import run_cli

REPO = "acme/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(cache_root: Path, repo: str = REPO, files: dict[str, str] | None = None) -> Path:
    """A real huggingface_hub cache entry (refs/main -> snapshots/<commit>/...), as a download leaves it."""
    files = files or {
        "config.json": json.dumps({"model_type": "llama"}),
        "tokenizer.json": "{}",
        "model.safetensors": "weights",
    }
    base = cache_root / "hf-cache" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


@pytest.fixture
def offline(isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hub_cache(isolated.parent / "cache")
    return isolated


def _cfg(*extra):
    return compose(["model.init=pretrained", f"model.pretrained_path={REPO}", *extra]).cfg


def test_download_stage_publishes_with_marker_and_is_skipped_next_time(offline):
    cfg = _cfg()
    run_dir = offline / "run"
    assert stages.applicable(cfg)[0] == Stage.download
    summary = job.run_job(run_dir, Stage.download, cfg)
    final = pretrained_dir(cfg)
    assert sorted(p.name for p in final.iterdir()) == [
        "_stage.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    marker = json.loads((final / "_stage.json").read_text())
    assert marker["stage"] == "download" and marker["fingerprint"] == fingerprint(Stage.download, cfg)
    assert summary["repos"][REPO]["bytes"] > 0
    assert read_status(run_dir, Stage.download)["state"] == "completed"
    assert not list(final.parent.glob(f".{final.name}.tmp-*"))
    assert job.run_job(run_dir, Stage.download, cfg) == {"skipped": True, "reason": f"complete at {final}"}
    assert is_complete(Stage.download, cfg, run_dir) == (True, f"complete at {final}")


def test_changed_config_is_not_complete_and_rebuilds(offline):
    cfg = _cfg()
    run_dir = offline / "run"
    job.run_job(run_dir, Stage.download, cfg)
    changed = _cfg(f"data.tokenizer={REPO}")
    done, why = is_complete(Stage.download, changed, run_dir)
    assert not done and why == "config changed since the output was made"
    job.run_job(run_dir, Stage.download, changed)
    assert is_complete(Stage.download, changed, run_dir)[0]


def test_stale_temporary_folders_are_cleared_and_output_never_partial(offline):
    cfg = _cfg()
    final = pretrained_dir(cfg)
    stale = final.with_name(f".{final.name}.tmp-99999")
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("x")
    job.run_job(offline / "run", Stage.download, cfg)
    assert not stale.exists() and final.is_dir()


def test_missing_repo_offline_is_a_clear_error(offline):
    cfg = compose(["model.init=pretrained", "model.pretrained_path=acme/not-cached"]).cfg
    with pytest.raises(ValueError, match="acme/not-cached is not in the cache"):
        job.run_job(offline / "run", Stage.download, cfg)
    assert not pretrained_dir(cfg).exists()


@pytest.mark.slow
def test_cli_run_status_and_rerun(offline):
    args = ["model.init=pretrained", f"model.pretrained_path={REPO}", "stages=[download]", "run_dir=myrun"]
    env = {"HF_HUB_OFFLINE": "1"}
    first = run_cli(args, cwd=offline, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[download] done" in first.stdout and "download run " in first.stdout
    for name in (
        "config.yaml",
        "plan.txt",
        "run.json",
        "stages/download/status.json",
        "stages/download/download.log",
    ):
        assert (offline / "myrun" / name).is_file(), name
    status = run_cli(["status"], cwd=offline, env=env)  # bare status = the latest run
    assert status.returncode == 0 and "download complete" in " ".join(status.stdout.split())
    again = run_cli(args, cwd=offline, env=env)
    assert again.returncode == 0 and "download skip" in again.stdout and "[download] skipped" in again.stdout
    # Status shows the outputs, not the last invocation: the rerun skipped the stage, whose output is complete.
    status = run_cli(["status", "myrun"], cwd=offline, env=env)
    assert "download complete" in " ".join(status.stdout.split()) and "skipped" not in status.stdout
    # The output of another config is stale: the next run rebuilds it.
    (offline / "myrun" / "config.yaml").write_text(
        (offline / "myrun" / "config.yaml").read_text().replace("tokenizer: sample", "tokenizer: other/tok")
    )
    stale = run_cli(["status", "myrun"], cwd=offline, env=env)
    assert "download stale" in " ".join(stale.stdout.split()) and "next run rebuilds it" in stale.stdout
    assert "not a run folder" in run_cli(["status", "nowhere"], cwd=offline).stderr
    cancel = run_cli(["cancel", "myrun"], cwd=offline, env=env)
    assert cancel.returncode == 0 and "no stage is queued or running" in cancel.stdout


def test_failed_stage_is_recorded_and_stops_the_run(offline):
    args = [
        "model.init=pretrained",
        "model.pretrained_path=acme/not-cached",
        "stages=[download]",
        "run_dir=bad",
    ]
    proc = run_cli(args, cwd=offline, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "acme/not-cached is not in the cache" in proc.stdout and "Traceback" not in proc.stdout
    state = json.loads((offline / "bad" / "stages" / "download" / "status.json").read_text())
    assert state["state"] == "failed" and "not in the cache" in state["error"]
