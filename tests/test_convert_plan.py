"""The `convert` stage inside a run plan: it reads where `download` writes, writes where NxD's trainer loads
pretrained weights from (`<checkpoint_dir>/pretrained_weight`, checkpoint_dir = the train stage's output), and its
layout comes from the same cfg.parallel fields the training plan derives its per-rank numbers from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from checkpoint.hf_adapter import to_hf_config
from checkpoint.nxd_layout import Arch, rank_plan
from checkpoint.stage_convert import layout_from_cfg
from core.arithmetic import head_dim
from core.paths import pretrained_dir
from core.stages import Stage
from launcher.compose import compose
from launcher.plan import make_plan
from launcher.validate import resolve_run_dir, validate
from tests.helpers.cli import run_cli
from tests.helpers.nxd_shapes import nxd_rank_shapes


def _plan(argv: list[str]):
    c = compose(argv)
    assert validate(c) == []
    return make_plan(c, resolve_run_dir(c))


def _agree(plan) -> None:
    """Convert stage output and layout vs the train stage: same folder convention, same per-rank tensors."""
    cfg, d = plan.cfg, plan.derived
    by = {sp.stage: sp for sp in plan.stages}
    assert by[Stage.convert].run and Stage.convert in by[Stage.train].after
    # NxD's trainer: --checkpoint_dir <train output> --pretrained_weight 1 loads <checkpoint_dir>/pretrained_weight.
    assert by[Stage.convert].output == by[Stage.train].output / "pretrained_weight"
    if Stage.download in by:
        assert by[Stage.download].output == pretrained_dir(cfg)  # convert reads what download wrote
    # The converter's flags the plan prints (parsed by its own parser) and what the nxd backend builds agree on every
    # layout field, and the backend loads the converted weights from where convert writes them.
    from checkpoint.convert import parser
    from train.backend_nxd import nxd_config_dict
    from train.stage_train import train_job

    conv = parser().parse_args(by[Stage.convert].nxd_args)
    job = train_job(cfg, plan.run_dir)
    nc = nxd_config_dict(job)
    assert (conv.tp_size, conv.pp_size) == (nc["tensor_parallel_size"], nc["pipeline_parallel_size"])
    assert (conv.kv_size_multiplier, conv.qkv_linear, conv.fuse_qkv) == (
        job.parallel.kv_size_multiplier,
        job.parallel.qkv_linear,
        job.parallel.fuse_qkv,
    )
    assert conv.save_xser and conv.output_dir == job.converted_dir == by[Stage.convert].output
    settings = "; ".join(by[Stage.train].nxd_settings)
    assert f"weights convert stage's shards {by[Stage.convert].output}" in settings
    assert by[Stage.compile].nxd_settings[:-1] == by[Stage.train].nxd_settings[:-1]  # + its few steps, no checkpoints
    p, lo = cfg.parallel, layout_from_cfg(cfg)
    assert (lo.tp, lo.pp, lo.kv_size_multiplier, lo.qkv_linear, lo.fuse_qkv) == (
        p.tensor_parallel_degree,
        p.pipeline_parallel_degree,
        p.kv_size_multiplier,
        p.qkv_linear,
        p.fuse_qkv,
    )
    assert (lo.tp, lo.pp) == (d.tensor_parallel, d.pipeline_parallel)
    m = cfg.model
    arch = Arch.from_hf_config(to_hf_config(m))
    hd = head_dim(m)
    for pp_rank in range(lo.pp):
        want = nxd_rank_shapes(m, d.tensor_parallel, d.pipeline_parallel, p.kv_size_multiplier, p.fuse_qkv, pp_rank)
        for tp_rank in (0, lo.tp - 1):
            got = {rt.key: rt.shape for rt in rank_plan(arch, lo, tp_rank, pp_rank)}
            assert got == want, (pp_rank, tp_rank)
        qkv = [s for k, s in got.items() if k.endswith("qkv_proj.weight_qkv")]
        assert len(qkv) == d.layers_per_stage[pp_rank]
        assert qkv[0][0] == (d.q_heads_per_rank + 2 * d.kv_heads_per_rank) * hd


@pytest.mark.parametrize(
    "argv",
    [
        ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod", "dry_run=true"],
        ["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod", "dry_run=true", "model.init=pretrained"],
    ],
    ids=["70b_tp32_pp8", "8b_tp32"],
)
def test_seed_plans_convert_where_training_loads_with_the_same_layout(argv):
    _agree(_plan(argv))


@pytest.mark.slow
def test_convert_stage_run_by_the_launcher_fills_the_planned_folder(tmp_path):
    """A real `python -m launcher stages=[convert]` run (trn1 plan, local executor): the rank files land in the
    folder the dry-run plan names for the train stage's pretrained weights; the rerun is skipped."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from checkpoint.hf_adapter import to_hf_config
    from checkpoint.torch_files import RankFile
    from core.config import JobConfig

    # 8 heads, 4 KV heads, 4 layers (pinned here: the tiny default may change)
    model = dataclasses.replace(
        JobConfig().model, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=4
    )
    hf = to_hf_config(model)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf.items() if k != "architectures"})).save_pretrained(
        tmp_path / "hf"
    )
    run_dir = tmp_path / "run"
    common = [
        "cluster.accelerator=trn1",
        "model.init=pretrained",
        f"model.pretrained_path={tmp_path / 'hf'}",
        "model.hidden_size=256",
        "model.intermediate_size=768",
        "model.num_attention_heads=8",
        "model.num_key_value_heads=4",
        "parallel.tensor_parallel_degree=8",
        "parallel.pipeline_parallel_degree=2",
        "parallel.kv_size_multiplier=2",
        "parallel.qkv_linear=true",
        "parallel.fuse_qkv=true",
        f"run_dir={run_dir}",
    ]
    plan = _plan([*common, "dry_run=true"])
    _agree(plan)
    out = next(sp.output for sp in plan.stages if sp.stage == Stage.convert)
    assert not out.exists()
    done = run_cli([*common, "stages=[convert]"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(f.name for f in (out / "model").glob("dp_rank_*_pp_rank_??.pt"))
    assert len(files) == 16 and files[-1] == "dp_rank_00_tp_rank_07_pp_rank_01.pt"
    marker = json.loads((out / "_stage.json").read_text())
    assert marker["stage"] == "convert" and marker["summary"]["files"] == 16
    last = RankFile(out / "model" / files[-1])
    assert last.xser and {k: tuple(last.get(k).shape) for k in last.names()} == nxd_rank_shapes(
        plan.cfg.model, 8, 2, 2, True, 1
    )
    again = _plan([*common, "dry_run=true"])
    assert next(sp for sp in again.stages if sp.stage == Stage.convert).reason.startswith("skipped")
    changed = _plan([*common, "dry_run=true", "parallel.fuse_qkv=false"])
    assert next(sp for sp in changed.stages if sp.stage == Stage.convert).run
    assert not list(Path(out.parent).glob(".pretrained_weight.tmp-*"))
