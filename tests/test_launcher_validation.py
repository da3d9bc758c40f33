"""Bad configurations: exit code 2, one paragraph per problem naming the key, the value and a valid
alternative, and nothing written (no run folder, no cache, no Hydra outputs/)."""

from __future__ import annotations

import json
import shutil

import pytest

from launcher.cli import main
from launcher.compose import ConfigError, compose
from launcher.validate import find_problems, validate
from tests.helpers.cli import run_cli, tree

H70 = ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod", "dry_run=true"]
H8 = ["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod", "dry_run=true"]

# (id, argv, strings that must all appear in the error output: key, value, valid alternative)
CASES = [
    ("unknown-parallel-option", ["parallel=tp64"], ["parallel=tp64", "tp32_pp8", "cpu_tp2"]),
    ("model-without-plus", ["model=llama3_70b"], ["model=llama3_70b", "+model=llama3_70b"]),
    ("unknown-model-option", ["+model=llama3_7b"], ["llama3_7b", "+model=llama3_70b"]),
    ("unknown-key-typo", ["optim.lrr=1"], ["optim.lrr", "lrr", "Did you mean optim.lr?"]),
    (
        "unknown-nested-key",
        ["parallel.tensor_paralel_degree=2"],
        ["parallel.tensor_paralel_degree", "parallel.tensor_parallel_degree"],
    ),
    ("unknown-top-key", ["foo=1"], ["foo", "Valid keys of the top level", "trainer"]),
    ("plus-on-plain-key", ["+optim.lr=1"], ["+optim.lr=1", "optim.lr=1"]),
    ("wrong-type-float", ["optim.lr=abc"], ["optim.lr=abc", "Float", "optim.lr=3e-4"]),
    (
        "wrong-type-int",
        ["trainer.max_steps=1.5"],
        ["trainer.max_steps=1.5", "Integer", "trainer.max_steps=8"],
    ),
    ("bad-enum", ["data.format=foo"], ["data.format=foo", "compact", "nxd"]),
    ("bad-stage-name", ["stages=[data,trian]"], ["stages", "trian", "train"]),
    ("stages-not-a-list", ["stages=data"], ["stages=data", "stages=[data]"]),
    ("bare-word", ["statuss"], ["statuss", "key=value"]),
    (
        "heads-not-divisible-by-tp",
        [*H8, "parallel.tensor_parallel_degree=24", "parallel.kv_size_multiplier=3", "cluster.nodes=3"],
        ["parallel.tensor_parallel_degree=24", "num_attention_heads (32", "16, 32"],
    ),
    (
        "tp-not-divisible-by-kvm",
        [*H8, "parallel.kv_size_multiplier=3"],
        ["parallel.kv_size_multiplier=3", "must divide", "16, 32"],
    ),
    (
        "kv-heads-times-kvm-not-tp",
        [*H70, "parallel.kv_size_multiplier=2"],
        ["parallel.kv_size_multiplier=2", "8 x 2 = 16 != 32", "parallel.kv_size_multiplier=4"],
    ),
    (
        "torch-kv-heads-not-divisible",
        ["parallel=cpu_tp2", "parallel.tensor_parallel_degree=4", "dry_run=true"],
        ["parallel.tensor_parallel_degree=4", "num_key_value_heads (2)", "[1, 2]"],
    ),
    (
        "torch-pipeline-refused",
        ["parallel.pipeline_parallel_degree=2", "dry_run=true"],
        ["parallel.pipeline_parallel_degree=2", "parallel.pipeline_parallel_degree=1"],
    ),
    (
        "layers-not-divisible-by-pp",
        [*H70, "parallel.pipeline_parallel_degree=3", "cluster.nodes=3"],
        ["parallel.pipeline_parallel_degree=3", "num_hidden_layers (80)", "10, 16, 20, 40"],
    ),
    (
        "world-not-multiple-of-tp-pp",
        [*H70, "cluster.nodes=12"],
        ["cluster.nodes=12", "tp (32) x pp (8) = 256", "cluster.nodes=8"],
    ),
    (
        "explicit-dp-mismatch",
        ["parallel=cpu_dp2", "cluster.devices_per_node=4", "dry_run=true"],
        ["parallel.data_parallel_degree=2", "!= world size 4", "parallel.data_parallel_degree=-1"],
    ),
    (
        "global-batch-not-divisible",
        [*H70, "trainer.global_batch_size=1023"],
        [
            "trainer.global_batch_size=1023",
            "dp (2) x micro_batch_size (1) = 2",
            "trainer.global_batch_size=1022",
        ],
    ),
    (
        "global-batch-vs-micro",
        ["trainer.micro_batch_size=5", "dry_run=true"],
        ["trainer.global_batch_size=16", "micro_batch_size (5) = 5", "trainer.global_batch_size=15"],
    ),
    ("seq-len-too-long", [*H70, "data.seq_len=9000"], ["data.seq_len=9000", "data.seq_len=8192"]),
    ("seq-len-too-short", ["data.seq_len=1", "dry_run=true"], ["data.seq_len=1", "data.seq_len=2048"]),
    (
        "max-steps-zero",
        ["trainer.max_steps=0", "dry_run=true"],
        ["trainer.max_steps=0", "trainer.max_steps=1000"],
    ),
    ("lr-zero", ["optim.lr=0", "dry_run=true"], ["optim.lr=0.0", "optim.lr=3e-4"]),
    ("min-lr-above-lr", ["optim.min_lr=1", "dry_run=true"], ["optim.min_lr=1.0", "optim.min_lr=0.0004"]),
    (
        "warmup-longer-than-run",
        ["optim.warmup_steps=500", "dry_run=true"],
        ["optim.warmup_steps=500", "trainer.max_steps (250)", "optim.warmup_steps=25"],
    ),
    (
        "steps-this-run-zero",
        ["trainer.steps_this_run=0", "dry_run=true"],
        ["trainer.steps_this_run=0", "trainer.steps_this_run=-1"],
    ),
    (
        "keep-last-zero",
        ["trainer.keep_last=0", "dry_run=true"],
        ["trainer.keep_last=0", "trainer.keep_last=2"],
    ),
    (
        "val-fraction",
        ["data.val_fraction=1.5", "dry_run=true"],
        ["data.val_fraction=1.5", "data.val_fraction=0.01"],
    ),
    (
        "kv-heads-not-dividing-heads",
        ["model.num_key_value_heads=4", "dry_run=true"],
        ["model.num_key_value_heads=4", "[1, 2, 3, 6]"],
    ),
    (
        "hidden-not-divisible-by-heads",
        ["model.hidden_size=250", "dry_run=true"],
        ["model.hidden_size=250", "model.hidden_size", "384"],
    ),
    (
        "pretrained-without-path",
        ["model.init=pretrained", "dry_run=true"],
        ["model.init=pretrained", "model.init=scratch"],
    ),
    (
        "pretrained-path-missing",
        ["model.init=pretrained", "model.pretrained_path=/no/such/model", "dry_run=true"],
        ["model.pretrained_path=/no/such/model", "does not exist", "config.json"],
    ),
    (
        "tokenizer-folder-missing",
        ["data.tokenizer=/no/such/tokenizer", "dry_run=true"],
        ["data.tokenizer=/no/such/tokenizer", "tokenizer.json", "save_pretrained"],
    ),
    ("files-without-paths", ["data=files", "dry_run=true"], ["data.paths=[]", 'data.paths=["corpus/*.txt"]']),
    (
        "files-glob-matches-nothing",
        ["data=files", "data.paths=[nowhere/*.txt]", "dry_run=true"],
        ["data.paths=", "nowhere/*.txt", "matches no file", "quote them"],
    ),
    ("local-multi-node", ["cluster.nodes=2", "dry_run=true"], ["cluster.nodes=2", "cluster=slurm"]),
    (
        "auto-resume-local",
        ["cluster.auto_resume=true", "dry_run=true"],
        ["cluster.auto_resume=True", "cluster.auto_resume=false"],
    ),
    (
        "nxd-backend-on-cuda",
        ["trainer.backend=nxd", "cluster.accelerator=cuda", "cluster.devices_per_node=1", "dry_run=true"],
        ["trainer.backend=nxd", "trainer.backend=auto", "NxD's CPU mode"],
    ),
    ("stage-not-applicable", ["stages=[convert]", "dry_run=true"], ["stages=[convert]", "data, train"]),
    (
        "stage-input-missing",
        ["stages=[train]"],
        ["stages=[train]", "stage train reads the output of stage data", "stages=[data,train]"],
    ),
    (
        "slurm-preflight",  # no such partition, or no Slurm answering here: checked before anything is queued
        ["cluster=slurm", "cluster.accelerator=cpu", "cluster.partition=nosuch"],
        ["cluster.partition='nosuch'"],
    ),
    (
        "sequence-parallel-slices",  # NxD's SP splits each sequence into tp slices between layers
        [*H70, "data.seq_len=4100"],
        ["data.seq_len=4100", "parallel.tensor_parallel_degree (32)", "data.seq_len=4096"],
    ),
    (
        "negative-sample-documents",
        ["data.sample_documents=-5", "dry_run=true"],
        ["data.sample_documents=-5", "data.sample_documents=0"],
    ),
    (
        "nxd-does-not-fit-a-neuron-core",
        [
            "+model=llama3_70b",
            "parallel=tp32_pp8",
            "cluster=hyperpod",
            "parallel.pipeline_parallel_degree=1",
            "parallel.zero1=false",
            "cluster.nodes=1",
            "dry_run=true",
        ],
        ["parallel.tensor_parallel_degree", "does not fit", "raise parallel.pipeline_parallel_degree"],
    ),
    ("zero-heads", ["model.num_attention_heads=0", "dry_run=true"], ["model.num_attention_heads=0", "at least 1"]),
    ("eps-zero", ["optim.eps=0", "dry_run=true"], ["optim.eps=0.0", "must be positive", "optim.eps=1e-8"]),
    (
        "activation-checkpointing",
        ["parallel.activation_checkpointing=most", "dry_run=true"],
        ["parallel.activation_checkpointing=most", "none, selective, full"],
    ),
    (
        "torch-tp-of-tied-embeddings",
        ["+model=llama3_2_1b", "parallel=cpu_tp2", "dry_run=true"],
        ["model.tie_word_embeddings=True", "parallel.tensor_parallel_degree=1"],
    ),
    (
        "sample-smaller-than-a-block",
        ["data.sample_documents=1", "dry_run=true"],
        ["data.seq_len=256", "smaller than one block", "at most", "estimated before tokenizing", "data.val_fraction"],
    ),
]
# The one key each case's problem names (composition errors: the key or option the paragraph starts with).
KEYS = {
    "unknown-parallel-option": "parallel=tp64",
    "model-without-plus": "model=llama3_70b",
    "unknown-model-option": "model=llama3_7b",
    "unknown-key-typo": "optim.lrr",
    "unknown-nested-key": "parallel.tensor_paralel_degree",
    "unknown-top-key": "foo",
    "plus-on-plain-key": "+optim.lr=1",
    "wrong-type-float": "optim.lr=abc",
    "wrong-type-int": "trainer.max_steps=1.5",
    "bad-enum": "data.format=foo",
    "bad-stage-name": "stages",
    "stages-not-a-list": "stages=data",
    "bare-word": "Command-line argument 'statuss'",
    "heads-not-divisible-by-tp": "parallel.tensor_parallel_degree",
    "tp-not-divisible-by-kvm": "parallel.kv_size_multiplier",
    "kv-heads-times-kvm-not-tp": "parallel.kv_size_multiplier",
    "torch-kv-heads-not-divisible": "parallel.tensor_parallel_degree",
    "torch-pipeline-refused": "parallel.pipeline_parallel_degree",
    "layers-not-divisible-by-pp": "parallel.pipeline_parallel_degree",
    "world-not-multiple-of-tp-pp": "cluster.nodes",
    "explicit-dp-mismatch": "parallel.data_parallel_degree",
    "global-batch-not-divisible": "trainer.global_batch_size",
    "global-batch-vs-micro": "trainer.global_batch_size",
    "seq-len-too-long": "data.seq_len",
    "seq-len-too-short": "data.seq_len",
    "max-steps-zero": "trainer.max_steps",
    "lr-zero": "optim.lr",
    "min-lr-above-lr": "optim.min_lr",
    "warmup-longer-than-run": "optim.warmup_steps",
    "steps-this-run-zero": "trainer.steps_this_run",
    "keep-last-zero": "trainer.keep_last",
    "val-fraction": "data.val_fraction",
    "kv-heads-not-dividing-heads": "model.num_key_value_heads",
    "hidden-not-divisible-by-heads": "model.hidden_size",
    "pretrained-without-path": "model.init",
    "pretrained-path-missing": "model.pretrained_path",
    "tokenizer-folder-missing": "data.tokenizer",
    "files-without-paths": "data.paths",
    "files-glob-matches-nothing": "data.paths",
    "local-multi-node": "cluster.nodes",
    "auto-resume-local": "cluster.auto_resume",
    "nxd-backend-on-cuda": "trainer.backend",
    "stage-not-applicable": "stages",
    "stage-input-missing": "stages",
    "slurm-submission": "cluster.executor",
    "sequence-parallel-slices": "data.seq_len",
    "negative-sample-documents": "data.sample_documents",
    "nxd-does-not-fit-a-neuron-core": "parallel.tensor_parallel_degree",
    "zero-heads": "model.num_attention_heads",
    "eps-zero": "optim.eps",
    "activation-checkpointing": "parallel.activation_checkpointing",
    "torch-tp-of-tied-embeddings": "model.tie_word_embeddings",
    "sample-smaller-than-a-block": "data.seq_len",
}


@pytest.mark.parametrize("argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_rejected_before_anything_is_written(isolated, capsys, argv, needles):
    if "cluster.partition=nosuch" in argv and shutil.which("sbatch") is None:
        # Without Slurm's client commands the preflight stops one step earlier, as clearly.
        needles = ["sbatch is not on PATH", "cluster=local"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: the configuration has")
    for needle in needles:
        assert needle in err, f"{needle!r} missing from:\n{err}"
    assert "Traceback" not in err
    # Nothing written: no run folder, no cache, no Hydra outputs/ or .hydra/.
    assert tree(isolated.parent) == ["work"], tree(isolated.parent)


# Cases the Slurm executor's preflight reports (it asks the cluster), after validate() found nothing.
PREFLIGHT = {"slurm-preflight"}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_each_bad_configuration_is_exactly_one_problem_naming_its_key(isolated, case):
    # Through the product's own composition and validate(): one problem per bad setting, no knock-on noise.
    argv = next(c[1] for c in CASES if c[0] == case)
    if case in PREFLIGHT:
        pytest.skip("checked by the Slurm executor's preflight (launcher/slurm_executor.py), not by validate()")
    try:
        composed = compose(argv)
    except ConfigError as err:
        assert len(err.problems) == 1, err.problems
        assert err.problems[0].startswith(KEYS[case]), err.problems[0]
        return
    found = find_problems(composed)
    assert [p.key for p in found] == [KEYS[case]], found
    assert validate(composed)[0].startswith(f"{KEYS[case]}=")


def test_every_problem_is_reported_at_once(isolated, capsys):
    rc = main(
        [
            *H70,
            "trainer.global_batch_size=1023",
            "data.seq_len=9000",
            "optim.lr=-1",
            "parallel.kv_size_multiplier=2",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "has 4 problems" in err
    assert err.count("\n- ") == 4


def test_error_names_the_option_or_recipe_that_set_the_value(isolated, capsys):
    # 8B recipe's 4 nodes cannot hold tp32 x pp8: the value came from the recipe the model selected.
    rc = main(["+model=llama3_8b", "parallel=tp32_pp8", "cluster=hyperpod", "dry_run=true"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cluster.nodes=4 (from recipe=llama3_8b, selected by model=llama3_8b)" in err
    rc = main([*H8, "parallel.kv_size_multiplier=3"])
    assert "(from command line)" in capsys.readouterr().err
    rc = main(["parallel=tp8_fsdp", "dry_run=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "parallel.tensor_parallel_degree=8 (from parallel=tp8_fsdp)" in err


def test_tokenizer_larger_than_model_vocabulary(isolated, capsys):
    tok = isolated.parent / "big_tokenizer"
    tok.mkdir()
    vocab = {f"t{i}": i for i in range(5000)}
    (tok / "tokenizer.json").write_text(
        json.dumps(
            {
                "model": {"type": "BPE", "vocab": vocab, "merges": []},
                "added_tokens": [{"id": 5000, "content": "<s>"}],
            }
        )
    )
    rc = main([f"data.tokenizer={tok}", "dry_run=true"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"data.tokenizer={tok}" in err and "5001 tokens" in err and "model.vocab_size (2048" in err


def test_typo_inside_a_group_yaml_is_an_error(tmp_path, monkeypatch, capsys):
    import shutil

    import launcher.compose as compose_mod

    conf = tmp_path / "conf"
    shutil.copytree(compose_mod.CONF_DIR, conf)
    text = (conf / "parallel" / "tp32_pp8.yaml").read_text().replace("kv_size_multiplier", "kv_size_multiplyer")
    (conf / "parallel" / "tp32_pp8.yaml").write_text(text)
    monkeypatch.setattr(compose_mod, "CONF_DIR", conf)
    monkeypatch.chdir(tmp_path)
    rc = main(H70)
    err = capsys.readouterr().err
    assert rc == 2
    assert "kv_size_multiplyer" in err and "conf/parallel/tp32_pp8.yaml" in err
    assert "Did you mean parallel.kv_size_multiplier?" in err


def test_real_cli_exit_code_and_no_hydra_outputs(isolated):
    proc = run_cli(["parallel=tp64", "optim.lr=abc"], cwd=isolated)
    assert proc.returncode == 2
    assert "parallel=tp64" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli([*H70, "cluster.nodes=12"], cwd=isolated)
    assert proc.returncode == 2 and "cluster.nodes=12" in proc.stderr
    assert tree(isolated) == []
