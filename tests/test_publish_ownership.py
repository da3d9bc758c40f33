"""core/publish.py replaces or deletes only what the launcher wrote, restores the last good output a killed swap
left aside, and removes a temporary folder when interrupted; and the plan refuses, before anything is written,
to publish a stage over a folder of the user's (data.output_dir with the user's files, a dataset NxD's
get_dataset.py saved, an export folder holding a model card)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import publish
from core.marker import STAGE_MARKER
from core.stages import Stage
from launcher.compose import compose
from launcher.plan import make_plan
from tests.helpers.cli import run_cli, tree


def _ours(folder: Path, entries: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        (folder / e).write_text("ours")
    (folder / STAGE_MARKER).write_text(json.dumps({"stage": "data", "entries": entries}))


def test_publishing_over_a_folder_of_the_users_raises_before_writing_unless_forced(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "notes.txt").write_text("the user's")
    with pytest.raises(publish.ForeignOutputError, match=r"notes\.txt.*force=true"), publish.publishing(final) as w:
        (w / "new").write_text("x")
    assert (final / "notes.txt").read_text() == "the user's" and tree(tmp_path) == ["out", "out/notes.txt"]
    with publish.publishing(final, force=True) as work:
        (work / "new").write_text("x")
    assert tree(final) == ["new"]


def test_an_empty_folder_and_a_folder_the_launcher_wrote_are_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with publish.publishing(empty) as work:
        (work / "a").write_text("x")
    assert tree(empty) == ["a"]
    ours = tmp_path / "ours"
    _ours(ours, ["train"])
    with publish.publishing(ours) as work:
        (work / "b").write_text("x")
    assert tree(ours) == ["b"]


def test_a_file_added_beside_our_marker_is_the_users(tmp_path):
    export = tmp_path / "export"
    _ours(export, ["model.safetensors", "config.json"])
    (export / "README.md").write_text("# model card")
    assert publish.foreign_entries(export) == ["README.md"]
    with pytest.raises(publish.ForeignOutputError, match=r"README\.md"):
        publish.swap_in(tmp_path, export)
    assert (export / "README.md").is_file() and (export / "model.safetensors").is_file()


def test_a_swap_killed_between_its_renames_gives_back_the_last_good_output(tmp_path):
    final = tmp_path / "out"
    # What a kill between "old moved aside" and "new moved in" leaves: no final, an old leftover of a dead pid.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = publish.sibling(final, "old").with_name(f".out.old-{publish._host()}-{dead.stdout.strip()}")
    _ours(old, ["train"])
    assert publish.clean_stale(final) == [] and (final / "train").read_text() == "ours" and not old.exists()


def test_an_interrupted_body_leaves_no_temporary_folder(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), publish.publishing(final) as work:
        (work / "half").write_text("x")
        raise KeyboardInterrupt
    assert tree(tmp_path) == []


def _plan(*overrides: str):
    c = compose(list(overrides))
    return make_plan(c, Path(c.cfg.run_dir))


def test_the_plan_refuses_a_data_output_dir_holding_a_dataset_nxd_wrote(isolated):
    import datasets

    nxd = isolated / "wikicorpus_llama3_tokenized_8k"
    datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]}).save_to_disk(str(nxd))
    before = {p: p.stat().st_mtime_ns for p in nxd.rglob("*")}
    plan = _plan(f"data.output_dir={nxd}", "run_dir=r", "stages=[data]")
    (refusal,) = plan.refusals
    assert f"data.output_dir={nxd}" in refusal and "dataset_info.json" in refusal and "force=true" in refusal
    forced = _plan(f"data.output_dir={nxd}", "run_dir=r", "stages=[data]", "force=true")
    assert not forced.refusals and "replaces files the launcher did not write" in forced.stages[0].reason
    # Through the CLI: exit 2, the paragraph, nothing written (no run folder, the dataset untouched).
    proc = run_cli([f"data.output_dir={nxd}", "run_dir=r", "stages=[data]"], cwd=isolated)
    assert proc.returncode == 2 and "data.output_dir=" in proc.stderr and "nothing was written" in proc.stderr
    assert not (isolated / "r").exists() and not (isolated / "runs").exists()
    assert {p: p.stat().st_mtime_ns for p in nxd.rglob("*")} == before


def test_the_plan_refuses_an_export_folder_holding_a_model_card(isolated):
    run = isolated / "r"
    _ours(run / "export", ["model.safetensors"])
    (run / "export" / "README.md").write_text("# model card")
    plan = _plan("run_dir=r", "stages=[export]", "trainer.max_steps=7")  # another config: export would rerun
    export = next(sp for sp in plan.stages if sp.stage == Stage.export)
    assert export.run and export.refusal and "README.md" in export.refusal and "run_dir" in export.refusal
    assert "REFUSED" in plan.render(with_scripts=False)
    # Without the card everything in the folder is the launcher's: it is replaced without asking.
    os.remove(run / "export" / "README.md")
    assert not _plan("run_dir=r", "stages=[export]", "trainer.max_steps=7").refusals
