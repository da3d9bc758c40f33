"""HF -> NxD -> HF round trips (bit-exact), the CLI (strict booleans, progress, summary, skip on rerun) and the
`convert` stage, on small Llama-3-shaped models written by transformers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoint.convert import main
from checkpoint.stage_convert import run as run_stage
from tests.helpers.hf import make_hf

ROOT = Path(__file__).resolve().parent.parent


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def flags(tp, pp, kvm, qkv_linear, fuse, xser=False):
    return [
        "--tp_size",
        str(tp),
        "--pp_size",
        str(pp),
        "--kv_size_multiplier",
        str(kvm),
        "--qkv_linear",
        str(int(qkv_linear)),
        "--fuse_qkv",
        "true" if fuse else "false",
        "--save_xser",
        str(int(xser)),
        "--no_progress",
    ]


COMBOS = {
    # model kwargs, (tp, pp, kvm, qkv_linear, fuse, xser)
    "tp8_kvm4_2q_fused_pp2": ({"heads": 16, "kv": 2, "layers": 4}, (8, 2, 4, True, True, False)),
    "tp8_kvm4_2q_unfused_xser": ({"heads": 16, "kv": 2, "layers": 2}, (8, 1, 4, True, False, True)),
    "tp4_kvm2_pp4_uneven_heads": ({"heads": 8, "kv": 2, "layers": 4}, (4, 4, 2, True, True, False)),
    "tp2_kvm1_fused": ({"heads": 8, "kv": 4, "layers": 2}, (2, 2, 1, True, True, True)),
    "mha_plain": ({"heads": 4, "kv": 4, "layers": 2}, (4, 2, 1, False, False, False)),
    "mha_coalesced": ({"heads": 4, "kv": 4, "layers": 2}, (2, 1, 1, False, True, False)),
    "tied_fp32": (
        {"heads": 8, "kv": 2, "layers": 2, "tie": True, "dtype": torch.float32},
        (8, 2, 4, True, True, False),
    ),
}


@pytest.mark.parametrize("combo", list(COMBOS))
def test_round_trip_is_bit_exact(tmp_path, combo, capsys):
    kw, layout = COMBOS[combo]
    make_hf(tmp_path / "hf", **kw)
    f = flags(*layout)
    assert (
        main(
            [
                "--input_dir",
                str(tmp_path / "hf"),
                "--output_dir",
                str(tmp_path / "nxd"),
                *f,
                "--convert_from_full_state",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--input_dir",
                str(tmp_path / "nxd"),
                "--config",
                str(tmp_path / "hf" / "config.json"),
                "--output_dir",
                str(tmp_path / "back"),
                *f,
                "--convert_to_full_state",
            ]
        )
        == 0
    )
    a, b = hf_tensors(tmp_path / "hf"), hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    out = capsys.readouterr().out
    assert "hf_to_nxd" in out and "nxd_to_hf" in out and "tensors" in out


def test_exported_folder_loads_in_transformers_with_same_logits(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    from data.tokenizer import ensure_sample_tokenizer

    model = make_hf(tmp_path / "hf", heads=16, kv=2, layers=2, dtype=torch.float32)
    # A downloaded HF folder holds its tokenizer beside config.json: the export copies it from there.
    tokenizer = ensure_sample_tokenizer(tmp_path / "tok", 300)
    for f in tokenizer.iterdir():
        (tmp_path / "hf" / f.name).write_bytes(f.read_bytes())
    f = flags(8, 2, 4, True, True)
    main(["--input_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "nxd"), *f, "--convert_from_full_state"])
    # A training checkpoint's step_N/model folder is accepted as input as well.
    step = tmp_path / "ckpt" / "step_5"
    (step).mkdir(parents=True)
    os.rename(tmp_path / "nxd" / "model", step / "model")
    main(
        [
            "--input_dir",
            str(step / "model"),
            "--config",
            str(tmp_path / "hf" / "config.json"),
            "--output_dir",
            str(tmp_path / "back"),
            *f,
            "--max_shard_size_gb",
            "0.0001",
            "--convert_to_full_state",
        ]
    )
    back = tmp_path / "back"
    assert (back / "model.safetensors.index.json").is_file()
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (back / name).is_file(), name
    tok, gen = AutoTokenizer.from_pretrained(back), GenerationConfig.from_pretrained(back)
    # BOS/EOS of the generation config are the tokenizer's (0, 1), not config.json's (transformers' 1, 2).
    assert (gen.bos_token_id, gen.eos_token_id) == (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    assert json.loads((back / "config.json").read_text())["eos_token_id"] == 2
    loaded = LlamaForCausalLM.from_pretrained(back).eval()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_single_torch_state_dict_file_is_accepted(tmp_path):
    model = make_hf(tmp_path / "hf", heads=8, kv=2, layers=2)
    torch.save(model.state_dict(), tmp_path / "full.pt")
    f = flags(8, 2, 4, True, True)
    for name, src in (("a", tmp_path / "hf"), ("b", tmp_path / "full.pt")):
        assert (
            main(
                [
                    "--input_dir",
                    str(src),
                    "--config",
                    str(tmp_path / "hf" / "config.json"),
                    "--output_dir",
                    str(tmp_path / name),
                    *f,
                    "--convert_from_full_state",
                ]
            )
            == 0
        )
    for rank in sorted((tmp_path / "a" / "model").iterdir()):
        assert rank.read_bytes() == (tmp_path / "b" / "model" / rank.name).read_bytes()


@pytest.mark.parametrize(
    "given,want",
    [
        ([], False),
        (["--qkv_linear"], True),
        (["--qkv_linear", "1"], True),
        (["--qkv_linear", "true"], True),
        (["--qkv_linear", "True"], True),
        (["--qkv_linear", "0"], False),
        (["--qkv_linear", "false"], False),
        (["--qkv_linear", "False"], None),
        (["--qkv_linear", "no"], None),
        (["--qkv_linear", "2"], None),
        (["--qkv_linear", ""], None),
    ],
)
def test_boolean_flags_are_strict(given, want, capsys):
    from checkpoint.convert import parser

    argv = ["--input_dir", "x", "--output_dir", "y", "--convert_from_full_state", *given, "--fuse_qkv", "0"]
    if want is None:
        with pytest.raises(SystemExit) as e:
            parser().parse_args(argv)
        assert e.value.code == 2 and "is not a boolean" in capsys.readouterr().err
    else:
        args = parser().parse_args(argv)
        assert args.qkv_linear is want and args.fuse_qkv is False


@pytest.mark.slow
def test_cli_strict_booleans_progress_and_rerun_skip(tmp_path):
    make_hf(tmp_path / "hf", heads=8, kv=2, layers=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [
        sys.executable,
        "-m",
        "checkpoint.convert",
        "--input_dir",
        str(tmp_path / "hf"),
        "--output_dir",
        str(tmp_path / "out"),
        "--tp_size",
        "2",
        "--convert_from_full_state",
    ]
    bad = subprocess.run([*base, "--qkv_linear", "maybe"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "'maybe' is not a boolean" in bad.stderr and not (tmp_path / "out").exists()
    # NxD's type=bool reads `--qkv_linear False` as true: ours refuses it, and `false` is false.
    nxd_false = subprocess.run([*base, "--qkv_linear", "False"], capture_output=True, text=True, env=env)
    assert nxd_false.returncode == 2 and "reads any non-empty value" in nxd_false.stderr
    assert not (tmp_path / "out").exists()
    ok = subprocess.run(
        [*base, "--qkv_linear", "false", "--kv_size_multiplier", "1"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    keys = torch.load(tmp_path / "out" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt", weights_only=True)
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert "tensors" in ok.stderr and "B/s" in ok.stderr  # progress bar: tensor count and rate
    assert "wrote    2 files" in ok.stdout and "MiB/s" in ok.stdout
    mtime = (tmp_path / "out" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt").stat().st_mtime_ns
    again = subprocess.run([*base, "--qkv_linear", "0"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert (tmp_path / "out" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt").stat().st_mtime_ns == mtime
    # A bare flag is true: now the output folder holds a different conversion.
    other = subprocess.run([*base, "--qkv_linear"], capture_output=True, text=True, env=env)
    assert other.returncode == 2 and "already holds a conversion of" in other.stderr
    assert (tmp_path / "out" / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt").stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_stage_writes_pretrained_weight_layout_from_cfg_parallel(tmp_path):
    from checkpoint.hf_adapter import to_hf_config
    from core.config import JobConfig
    from core.stages import Stage, StageContext
    from model.config import Init

    cfg = JobConfig()
    # 8 heads, 4 KV heads, 4 layers (pinned here: the tiny default may change)
    cfg.model = dataclasses.replace(
        cfg.model, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=4
    )
    m = cfg.model
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = to_hf_config(m)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf.items() if k != "architectures"})).save_pretrained(
        tmp_path / "hf"
    )
    cfg.model.init, cfg.model.pretrained_path = Init.pretrained, str(tmp_path / "hf")
    p = cfg.parallel
    p.tensor_parallel_degree, p.pipeline_parallel_degree, p.kv_size_multiplier = 8, 2, 2
    p.qkv_linear, p.fuse_qkv = True, True
    work = tmp_path / "run" / "checkpoints" / ".pretrained_weight.tmp"
    ctx = StageContext(Stage.convert, tmp_path / "run", work, tmp_path / "run" / "checkpoints" / "pretrained_weight")
    summary = run_stage(cfg, ctx)
    assert summary["files"] == 16 and json.dumps(summary)
    rank = work / "model" / "dp_rank_00_tp_rank_07_pp_rank_01.pt"
    assert rank.is_file() and (work / "model" / f"{rank.name}.tensors").is_dir()
    from checkpoint.torch_files import RankFile

    keys = RankFile(rank).names()
    assert "model.layers.3.self_attn.qkv_proj.weight_qkv" in keys and "lm_head.weight" in keys
    assert not any("layers.1." in k for k in keys)


def test_layout_comes_from_the_parallel_fields_the_fingerprint_tracks():
    """One config field per layout knob: the conversion reads exactly these, and changing any of them
    invalidates a finished `convert` stage (the NxD launch reads the same fields)."""
    from dataclasses import replace

    from checkpoint.nxd_layout import Layout
    from checkpoint.stage_convert import layout_from_cfg
    from core.config import JobConfig
    from core.fingerprint import fingerprint
    from core.stages import Stage

    cfg = JobConfig()
    base = fingerprint(Stage.convert, cfg)
    changes = {
        "tensor_parallel_degree": ("tp", 8),
        "pipeline_parallel_degree": ("pp", 2),
        "kv_size_multiplier": ("kv_size_multiplier", 2),
        "qkv_linear": ("qkv_linear", not cfg.parallel.qkv_linear),
        "fuse_qkv": ("fuse_qkv", not cfg.parallel.fuse_qkv),
    }
    for field, (attr, value) in changes.items():
        changed = replace(cfg, parallel=replace(cfg.parallel, **{field: value}))
        assert getattr(layout_from_cfg(changed), attr) == value, field
        assert layout_from_cfg(changed) == replace(layout_from_cfg(cfg), **{attr: value})
        assert fingerprint(Stage.convert, changed) != base, field
    assert layout_from_cfg(cfg) == Layout(1, 1, 1, cfg.parallel.qkv_linear, cfg.parallel.fuse_qkv, "trn1")
