"""Config groups: schemas catch typos, model files match the published config.json values, every combination
composes, presets flow from the model to its recipe, the command line wins, help and --cfg job work."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from omegaconf import OmegaConf

from core.config import JobConfig
from launcher.cli import main
from launcher.compose import CONF_DIR, compose, options
from model.config import ModelConfig, RopeScaling

ARCH_FIELDS = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("init", "pretrained_path")]

# config.json values (shared/reference/nxd-llama-example.md §1.1 for Llama 3 / 3.1; Meta's Llama 3.2 configs).
REFERENCE = {
    "llama3_8b": dict(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        vocab_size=128256,
        rope_factor=0.0,
        tie_word_embeddings=False,
    ),
    "llama3_70b": dict(
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=8,
        num_hidden_layers=80,
        intermediate_size=28672,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        vocab_size=128256,
        rope_factor=0.0,
        tie_word_embeddings=False,
    ),
    "llama3_1_8b": dict(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_factor=8.0,
        tie_word_embeddings=False,
    ),
    "llama3_1_70b": dict(
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=8,
        num_hidden_layers=80,
        intermediate_size=28672,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_factor=8.0,
        tie_word_embeddings=False,
    ),
    "llama3_2_1b": dict(
        hidden_size=2048,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=16,
        intermediate_size=8192,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_factor=32.0,
        tie_word_embeddings=True,
    ),
    "llama3_2_3b": dict(
        hidden_size=3072,
        num_attention_heads=24,
        num_key_value_heads=8,
        num_hidden_layers=28,
        intermediate_size=8192,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_factor=32.0,
        tie_word_embeddings=True,
    ),
}


def test_required_options_exist():
    assert {"tiny", "llama3_8b", "llama3_70b", "llama3_1_8b", "llama3_1_70b"} <= set(options("model"))
    assert {"none", "tp32_zero1", "tp32_pp8", "cpu_tp2", "cpu_dp2"} <= set(options("parallel"))
    assert {"local", "slurm", "hyperpod"} <= set(options("cluster"))
    assert {"sample", "files", "wikicorpus"} <= set(options("data"))


@pytest.mark.parametrize("name", options("model"))
def test_every_model_yaml_sets_every_architecture_field(name):
    node = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    missing = [f for f in ARCH_FIELDS if f not in node]
    assert not missing, f"conf/model/{name}.yaml does not set {missing}: they would inherit the tiny values"
    scaling = [f.name for f in dataclasses.fields(RopeScaling)]
    assert sorted(node.rope_scaling.keys()) == sorted(scaling)
    assert node.name == name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_model_numbers_match_the_published_config(name):
    m = compose([f"+model={name}"]).cfg.model
    ref = dict(REFERENCE[name])
    assert m.rope_scaling.factor == ref.pop("rope_factor")
    for key, value in ref.items():
        assert getattr(m, key) == value, key
    assert m.rms_norm_eps == 1e-5 and m.bos_token_id == 128000 and m.eos_token_id == 128001
    if m.rope_scaling.factor:
        assert (
            m.rope_scaling.low_freq_factor,
            m.rope_scaling.high_freq_factor,
            m.rope_scaling.original_max_position_embeddings,
        ) == (1.0, 4.0, 8192)


def test_schema_default_model_is_the_tiny_yaml():
    """The schema default must equal conf/model/tiny.yaml (no +model= means tiny) and be the same class."""
    default = compose([]).cfg.model
    tiny = compose(["+model=tiny"]).cfg.model
    assert type(default) is ModelConfig and default == tiny
    assert JobConfig().model == tiny


def _combinations() -> list:
    """Every model x parallel x cluster option; the development run composes a covering subset (each option at
    least once), `--full` all of them."""
    groups = [options("model"), options("parallel"), options("cluster")]
    longest = max(len(g) for g in groups)
    cover = {tuple(g[i % len(g)] for g in groups) for i in range(longest)}
    return [
        combo if combo in cover else pytest.param(*combo, marks=pytest.mark.slow)
        for combo in itertools.product(*groups)
    ]


@pytest.mark.parametrize("model,parallel,cluster", _combinations())
def test_every_combination_composes(model, parallel, cluster):
    c = compose([f"+model={model}", f"parallel={parallel}", f"cluster={cluster}"])
    assert c.cfg.parallel.name == parallel and c.cfg.cluster.name == cluster and c.cfg.model.name == model
    assert (
        c.choices["recipe"]
        == OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml").defaults[1]["override /recipe@_global_.recipe"]
    )


def test_model_selects_its_recipe_and_the_command_line_wins():
    c = compose(["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod"]).cfg
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.min_lr, c.optim.schedule.value) == (
        1.5e-5,
        2000,
        1e-6,
        "cosine",
    )
    assert (c.data.name, c.data.seq_len, c.data.tokenizer) == (
        "wikicorpus",
        8192,
        "meta-llama/Meta-Llama-3-70B",
    )
    assert (c.cluster.nodes, c.trainer.global_batch_size, c.model.init.value) == (16, 1024, "pretrained")
    c = compose(
        [
            "+model=llama3_70b",
            "parallel=tp32_pp8",
            "cluster=hyperpod",
            "data=sample",
            "optim.lr=3e-4",
            "data.seq_len=4096",
            "cluster.nodes=8",
            "model.init=scratch",
        ]
    ).cfg
    assert (c.data.name, c.optim.lr, c.data.seq_len, c.cluster.nodes, c.model.init.value) == (
        "sample",
        3e-4,
        4096,
        8,
        "scratch",
    )
    c = compose(["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod"]).cfg
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.schedule.value, c.optim.beta2) == (
        1.5e-4,
        100,
        "linear",
        0.999,
    )
    assert (c.cluster.nodes, c.trainer.seed) == (4, 12349)


def test_3_1_models_use_the_size_recipe_with_their_own_weights():
    c = compose(["+model=llama3_1_70b", "parallel=tp32_pp8", "cluster=hyperpod"]).cfg
    assert c.data.tokenizer == c.model.pretrained_path == "meta-llama/Llama-3.1-70B"
    assert c.optim.lr == 1.5e-5


def test_help_lists_options_and_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in [
        "status",
        "cancel",
        "+model",
        "tiny",
        "llama3_70b",
        "tp32_pp8",
        "hyperpod",
        "wikicorpus",
        "dry_run",
    ]:
        assert word in out
    assert "base" not in out.split("Config groups")[1].split("Frequently")[0]  # schemas are not options


def test_cfg_job_prints_the_composed_config(isolated, capsys):
    assert main(["--cfg", "job", "+model=llama3_8b", "optim.lr=3e-4"]) == 0
    out = OmegaConf.create(capsys.readouterr().out)
    assert out.optim.lr == 3e-4 and out.model.num_hidden_layers == 32
    assert list(isolated.iterdir()) == []


def test_multirun_points_get_their_own_folders(isolated, capsys):
    assert main(["-m", "optim.lr=1e-3,2e-3", "trainer.seed=1,2", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert out.count("Plan for") == 4
    for name in ("optim.lr=0.001,trainer.seed=1", "optim.lr=0.002,trainer.seed=2"):
        assert f"runs/tiny-none-local/multirun/{name}" in out
    assert list(isolated.iterdir()) == []


def test_multirun_validates_every_point_first(isolated, capsys):
    assert main(["-m", "optim.lr=1e-3,-1", "dry_run=true"]) == 2
    err = capsys.readouterr().err
    assert "[optim.lr=-1 " in err and "] optim.lr=-1.0 (from command line)" in err and "has 1 problem" in err
