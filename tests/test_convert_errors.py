"""Bad input gives one clear error and leaves nothing at the output path; an interrupted conversion too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoint.convert import main
from tests.helpers.hf import make_hf

ROOT = Path(__file__).resolve().parent.parent


def convert(src: Path, out: Path, *extra: str, mode: str = "--convert_from_full_state") -> int:
    return main(["--input_dir", str(src), "--output_dir", str(out), "--no_progress", *extra, mode])


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(out.name) or p.name.startswith(f".{out.name}")]


@pytest.fixture
def hf(tmp_path):
    make_hf(tmp_path / "hf", heads=8, kv=2, layers=4)
    return tmp_path / "hf"


def test_truncated_shard_is_named(tmp_path, hf, capsys):
    shard = sorted(hf.glob("model-*.safetensors"))[2]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    assert convert(hf, tmp_path / "out", "--tp_size", "2") == 2
    err = capsys.readouterr().err
    assert shard.name in err and "truncated or corrupt" in err
    assert leftovers(tmp_path / "out") == []


def test_corrupt_header_is_named(tmp_path, hf, capsys):
    shard = sorted(hf.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:16] = b"\x00garbage"
    shard.write_bytes(bytes(data))
    assert convert(hf, tmp_path / "out", "--tp_size", "2") == 2
    assert shard.name in capsys.readouterr().err
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--tp_size", "3"], "--tp_size=3: must divide num_attention_heads (8), vocab_size (128)"),
        (["--tp_size", "2", "--pp_size", "3"], "--pp_size=3: must divide num_hidden_layers (4)"),
        (["--tp_size", "4", "--qkv_linear", "1", "--kv_size_multiplier", "4"], "Fix: set --kv_size_multiplier=2."),
        (["--tp_size", "2", "--n_layers", "80"], "--n_layers 80 disagrees with num_hidden_layers 4"),
        (["--tp_size", "2", "--hw_backend", "trn2"], "--hw_backend=trn2: is not supported"),
    ],
)
def test_layout_errors(tmp_path, hf, capsys, args, needle):
    assert convert(hf, tmp_path / "out", *args) == 2
    assert needle in capsys.readouterr().err
    assert leftovers(tmp_path / "out") == []


def test_missing_shard_on_the_way_back(tmp_path, hf, capsys):
    f = ["--tp_size", "4", "--pp_size", "2", "--qkv_linear", "--kv_size_multiplier", "2", "--fuse_qkv"]
    assert convert(hf, tmp_path / "nxd", *f) == 0
    (tmp_path / "nxd" / "model" / "dp_rank_00_tp_rank_02_pp_rank_01.pt").unlink()
    assert (
        convert(
            tmp_path / "nxd", tmp_path / "back", *f, "--config", str(hf / "config.json"), mode="--convert_to_full_state"
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing dp_rank_00_tp_rank_02_pp_rank_01.pt" in err
    assert leftovers(tmp_path / "back") == []
    # A truncated shard is named too.
    shard = tmp_path / "nxd" / "model" / "dp_rank_00_tp_rank_01_pp_rank_00.pt"
    shard.write_bytes(shard.read_bytes()[:-300])
    (tmp_path / "nxd" / "model" / "dp_rank_00_tp_rank_02_pp_rank_01.pt").write_bytes(shard.read_bytes())
    back = ["--config", str(hf / "config.json"), "--convert_to_full_state"]
    assert convert(tmp_path / "nxd", tmp_path / "back", *f, *back[:2], mode=back[2]) == 2
    err = capsys.readouterr().err
    assert f"{shard} is not a readable NxD checkpoint file" in err and "truncated or corrupt" in err
    assert leftovers(tmp_path / "back") == []


def test_wrong_flags_on_the_way_back(tmp_path, hf, capsys):
    f = ["--tp_size", "4", "--qkv_linear", "--kv_size_multiplier", "2"]
    assert convert(hf, tmp_path / "nxd", *f, "--fuse_qkv") == 0
    assert (
        convert(
            tmp_path / "nxd",
            tmp_path / "back",
            *f,
            "--fuse_qkv",
            "0",
            "--config",
            str(hf / "config.json"),
            mode="--convert_to_full_state",
        )
        == 2
    )
    assert "weight_qkv" in capsys.readouterr().err
    assert leftovers(tmp_path / "back") == []


def test_tokenizer_dir_without_a_tokenizer_is_refused_before_anything_is_written(tmp_path, hf, capsys):
    f = ["--tp_size", "2"]
    assert convert(hf, tmp_path / "nxd", *f) == 0
    (tmp_path / "empty").mkdir()
    back = ["--config", str(hf / "config.json"), "--tokenizer_dir", str(tmp_path / "empty")]
    assert convert(tmp_path / "nxd", tmp_path / "back", *f, *back, mode="--convert_to_full_state") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'} holds no tokenizer" in err and "--tokenizer_dir" in err
    assert leftovers(tmp_path / "back") == [] and not (tmp_path / "back").exists()


def test_output_folder_with_other_content_is_refused(tmp_path, hf, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert convert(hf, tmp_path / "out", "--tp_size", "2") == 2
    assert "already holds other files" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_conversion_leaves_nothing_at_the_output(tmp_path, sig):
    # Big enough (~100 MB of fp32 slices) that the conversion is still running when the signal lands.
    import torch

    make_hf(
        tmp_path / "hf", heads=8, kv=2, layers=4, hidden=512, inter=1536, vocab=8192, dtype=torch.float32, shard="20MB"
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "checkpoint.convert",
        "--input_dir",
        str(tmp_path / "hf"),
        "--output_dir",
        str(out),
        "--tp_size",
        "8",
        "--pp_size",
        "2",
        "--qkv_linear",
        "--kv_size_multiplier",
        "4",
        "--save_xser",
        "--no_progress",
        "--convert_from_full_state",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/model/*.tensors/tensor_3.pt")):
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0 and not out.exists()
    if sig == signal.SIGTERM:
        assert not list(tmp_path.glob(".out.tmp-*"))  # cleaned up on the way out
    # The rerun completes (and clears a SIGKILLed run's temporary folder).
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((out / "model").glob("dp_rank_*_pp_rank_??.pt"))) == 16 and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"num_key_value_heads": 4}, "self_attn.k_proj.weight in /"),
        ({"num_attention_heads": 16, "head_dim": 4}, "has shape [16, 64] but the config implies [8, 64]"),
        ({"num_hidden_layers": 6}, "missing ['model.layers.4."),
        ({"head_dim": 16}, "has head_dim 16"),
    ],
)
def test_config_json_head_and_layer_counts_are_checked_against_the_weights(tmp_path, hf, capsys, change, needle):
    import json

    cfg = {**json.loads((hf / "config.json").read_text()), **change}
    (tmp_path / "other.json").write_text(json.dumps(cfg))
    assert convert(hf, tmp_path / "out", "--tp_size", "2", "--config", str(tmp_path / "other.json")) == 2
    err = capsys.readouterr().err
    assert needle in err and "config" in err
    assert leftovers(tmp_path / "out") == []
