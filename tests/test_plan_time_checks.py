"""Checks the stages would make at run time, made by the plan instead (before anything is written or queued), in
the same words the stage would use."""

from __future__ import annotations

import dataclasses
import json

import pytest

from checkpoint.hf_adapter import to_hf_config
from core.problems import describe
from data.config import DataConfig, DataSource
from launcher.cli import main
from launcher.compose import compose
from launcher.validate import find_problems
from model.config import ModelConfig
from tests.helpers.cli import tree


def _refused(capsys, isolated, argv: list[str], *needles: str) -> str:
    rc = main([*argv, "dry_run=true"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "has 1 problem" in err, err
    for n in needles:
        assert n in err, f"{n!r} not in:\n{err}"
    # Nothing written: no run folder, no cache, no Hydra outputs/.
    assert tree(isolated) == [] and not (isolated.parent / "cache").exists()
    return err


def _hf_folder(path, cfg: ModelConfig, weights: bool = True):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(to_hf_config(cfg)))
    if weights:
        (path / "model.safetensors").write_bytes(b"")  # the plan never reads tensors
    return path


def test_pretrained_config_that_does_not_match_the_model(isolated, capsys):
    other = dataclasses.replace(ModelConfig(), hidden_size=256, num_hidden_layers=2)
    folder = _hf_folder(isolated.parent / "hf", other)
    argv = ["model.init=pretrained", f"model.pretrained_path={folder}"]
    err = _refused(capsys, isolated, argv, f"model.pretrained_path={folder}", "does not match", "hidden_size=192")
    # The train stage's loader raises the same sentence.
    from checkpoint.hf_folder import check_config

    with pytest.raises(ValueError) as info:
        check_config(folder, ModelConfig())
    assert str(info.value).split(": ", 1)[1] in err


def test_pretrained_folder_without_safetensors(isolated, capsys):
    folder = _hf_folder(isolated.parent / "hf", ModelConfig(), weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"")
    argv = ["model.init=pretrained", f"model.pretrained_path={folder}"]
    err = _refused(capsys, isolated, argv, "has no *.safetensors", "save_pretrained")
    from checkpoint.hf_folder import checkpoint_files

    with pytest.raises(ValueError) as info:
        checkpoint_files(folder)
    assert str(info.value).split(": ", 1)[1] in err


def test_a_matching_pretrained_folder_passes(isolated):
    folder = _hf_folder(isolated.parent / "hf", ModelConfig())
    c = compose(["model.init=pretrained", f"model.pretrained_path={folder}", "dry_run=true"])
    assert find_problems(c) == []


def test_corpus_file_of_an_unsupported_type(isolated, capsys):
    (isolated.parent / "a.csv").write_text("text\nhello\n")
    (isolated.parent / "b.jsonl").write_text(json.dumps({"text": "hello " * 400}) + "\n")
    pattern = str(isolated.parent / "*")
    err = _refused(capsys, isolated, ["data=files", f"data.paths=[{pattern}]"], "a.csv", "'.csv'", "*.jsonl")
    from data.sources import CorpusError, expand

    with pytest.raises(CorpusError) as info:
        expand([pattern])
    assert str(info.value).split(": ", 1)[1] in err


def _jsonl(path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_validation_split_smaller_than_a_block_is_found_by_an_estimate(isolated, capsys):
    # 51 documents, 2% held out: documents 0 and 50, both short; the long one trains.
    corpus = _jsonl(isolated.parent / "c.jsonl", ["doc 0", "long " * 400] + [f"doc {i}" for i in range(2, 51)])
    argv = ["data=files", f"data.paths=[{corpus}]", "data.seq_len=128", "data.val_fraction=0.02"]
    _refused(capsys, isolated, argv, "data.val_fraction=0.02", "held out 2 of 51 documents", "at most", "estimated")


def test_the_estimate_never_refuses_a_split_that_could_hold_a_block(isolated):
    # Held-out documents of 400 bytes may well make a 128-token block: not refused (only certain failures are).
    corpus = _jsonl(isolated.parent / "c.jsonl", ["word " * 80 for _ in range(50)])
    c = compose(["data=files", f"data.paths=[{corpus}]", "data.seq_len=128", "data.val_fraction=0.02", "dry_run=true"])
    assert find_problems(c) == []


def test_held_out_rule_agrees_with_the_data_stage():
    from data.prepare import validation_mask
    from data.rules import fraction, held_out

    for f in (0.0, 0.01, 0.02, 0.1, 0.3333, 0.5):
        d = DataConfig(source=DataSource.sample, val_fraction=f)
        mask = validation_mask(0, 500, fraction(d)).tolist()
        assert mask == [held_out(i, fraction(d)) for i in range(500)]


def test_model_rules_read_the_same_at_plan_time_and_at_run_time(isolated):
    from model.llama3 import build

    c = compose(["model.hidden_size=250", "dry_run=true"])
    (problem,) = find_problems(c)
    with pytest.raises(ValueError) as info:
        build(c.cfg.model, device="meta")
    assert str(info.value) == describe(problem)


@pytest.mark.parametrize(
    "argv",
    [
        ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod"],
        ["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod"],
        ["cluster.accelerator=trn1", "parallel.tensor_parallel_degree=2", "parallel.qkv_linear=true"],
    ],
)
def test_the_plan_checks_the_layout_the_convert_stage_uses(isolated, argv):
    from checkpoint.stage_convert import layout_from_cfg
    from launcher.validate import nxd_layout

    cfg = compose([*argv, "dry_run=true"]).cfg
    assert nxd_layout(cfg) == layout_from_cfg(cfg)
