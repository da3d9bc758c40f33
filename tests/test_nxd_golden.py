"""Golden files of the seed's NxD jobs, written by hand from ../shared/reference/nxd-llama-example.md (sections 1.2,
1.3, 4.1) and the seed's job (16 trn1.32xlarge nodes, TP 32 x PP 8, kv multiplier 4, continual pretraining from
Meta-Llama-3-70B, auto-resume), not recorded from the code:

- tests/golden/nxd_*.node.sh: the bash one Slurm task per node runs (launcher/nxd_env.py:node_command), with the
  example's environment, the rendezvous port reserved before torchrun, and torchrun's topology;
- tests/golden/nxd_config_*.json: the keyword arguments the nxd backend passes to NxD's
  `neuronx_distributed_config` (train/backend_nxd.py:nxd_config_dict).

The sbatch scripts around these commands are not pinned here (their generation is being rewritten).
Deliberate differences from NxD's scripts, each a choice stated in the code: the compile cache on the shared file
system instead of $HOME, MASTER_ADDR as the first host name (the 70B script resolves it to an IP), the port added
to the node's reserved list with `sudo -n` instead of replacing it with sudo, the loss-only
`output_loss_value_spec` (our model returns the loss alone).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from core.stages import Stage
from launcher.compose import compose
from tests.helpers.nxd_available import requires_nxd

GOLDEN = Path(__file__).parent / "golden"
SEED_70B = ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod"]
NXD_8B = ["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod"]
RUNS = "/fsx/trainium-launcher/runs"
JOBS = {
    "nxd_llama3_70b_seed_train": (SEED_70B, f"{RUNS}/llama3_70b-tp32_pp8-hyperpod", Stage.train),
    "nxd_llama3_70b_seed_compile": (SEED_70B, f"{RUNS}/llama3_70b-tp32_pp8-hyperpod", Stage.compile),
    "nxd_llama3_8b_train": (NXD_8B, f"{RUNS}/llama3_8b-tp32_zero1-hyperpod", Stage.train),
}
# neuronx_distributed_config's parameters (reference 4.1; NxD 0.18's trainer.py): the dicts may use no others.
NXD_CONFIG_PARAMETERS = {
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "expert_parallel_size",
    "context_parallel_size",
    "pipeline_config",
    "optimizer_config",
    "activation_checkpoint_config",
    "pad_model",
    "sequence_parallel",
    "model_init_config",
    "lora_config",
    "mixed_precision_config",
    "sequential_move_factor",
    "lnc_size",
}


def _node_command(name: str) -> str:
    from launcher.nxd_env import node_command

    overrides, run_dir, stage = JOBS[name]
    return node_command(compose(overrides).cfg, run_dir, stage, python="python")


@pytest.mark.parametrize("name", sorted(JOBS))
def test_per_node_command_matches_golden_file(name):
    assert _node_command(name) + "\n" == (GOLDEN / f"{name}.node.sh").read_text()


def _parse(script: str, node_id: int, master: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(exported environment, the exec'd command before torchrun's own arguments, torchrun's arguments) of a
    per-node script, as node `node_id` of an allocation whose first host is `master` would run it."""
    env: dict[str, str] = {}
    exec_line = ""
    for line in script.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            (env[key],) = shlex.split(value)
        elif line.startswith("exec "):
            exec_line = line.removeprefix("exec ")
    words = shlex.split(exec_line.replace("$SLURM_NODEID", str(node_id)).replace("$MASTER_ADDR", master))
    i = words.index("torch.distributed.run")
    return env, words[: i + 1], words[i + 1 :]


@pytest.mark.parametrize("name", sorted(JOBS))
def test_golden_per_node_commands_parse_with_torchrun_and_bash(name):
    """The golden scripts are valid bash; their torchrun arguments parse with torchrun's own parser to the seed's
    topology; their environment is NxD's example's for that recipe."""
    from torch.distributed.run import get_args_parser

    text = (GOLDEN / f"{name}.node.sh").read_text()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    overrides, run_dir, stage = JOBS[name]
    env, launcher, args = _parse(text, 3, "node-001")
    a = get_args_parser().parse_args(args)
    nodes = 16 if overrides is SEED_70B else 4
    topology = (a.nproc_per_node, a.nnodes, a.node_rank, a.master_addr, a.master_port)
    assert topology == ("32", str(nodes), 3, "node-001", 44000)
    assert a.module and (a.training_script, a.training_script_args) == ("launcher.job", [run_dir, stage.value])
    assert launcher[:1] == (["neuron_parallel_compile"] if stage == Stage.compile else ["python"])
    pipeline = overrides is SEED_70B
    assert env["NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS"] == ("7" if pipeline else "3")
    assert env["MALLOC_ARENA_MAX"] == ("128" if pipeline else "64")
    assert ("XLA_DISABLE_FUNCTIONALIZATION" in env) == pipeline  # the 70B script only
    for key in ("NEURON_RT_NUM_CORES", "NUM_NEURONCORES", "TPU_NUM_DEVICES", "TPU_CHIPS_PER_HOST_BOUNDS"):
        assert env.get(key) == (None if pipeline else "32"), key  # the 8B script only
    assert env["NEURON_CC_FLAGS"].split() == [
        "--model-type=transformer",
        "--cache_dir=/fsx/trainium-launcher/cache/neuron-compile-cache",
    ]
    for key, value in {
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "FI_PROVIDER": "efa",
        "FI_EFA_FORK_SAFE": "1",
        "NEURON_FUSE_SOFTMAX": "1",
        "XLA_DOWNCAST_BF16": "1",
        "NEURON_RT_STOCHASTIC_ROUNDING_EN": "0",
    }.items():
        assert env[key] == value, key
    # the port is reserved before torchrun starts, the configured one, added to the node's list
    reserve = text.index("ip_local_reserved_ports=")
    assert reserve < text.index("exec ") and '"${reserved:+$reserved,}44000"' in text and "sudo -n " in text


def test_port_reservation_follows_config_and_can_be_turned_off():
    from launcher.nxd_env import node_command

    cfg = compose([*SEED_70B, "cluster.neuron.master_port=45123"]).cfg
    cmd = node_command(cfg, "/fsx/run", Stage.train)
    assert "grep -qx 45123" in cmd and '"${reserved:+$reserved,}45123"' in cmd and "--master_port=45123" in cmd
    off = node_command(compose([*SEED_70B, "cluster.neuron.reserve_port=false"]).cfg, "/fsx/run", Stage.train)
    assert "sysctl" not in off and "ip_local_reserved_ports" not in off


@pytest.mark.parametrize("model,overrides", [("llama3_70b", SEED_70B), ("llama3_8b", NXD_8B)])
def test_nxd_config_dict_matches_golden_file(model, overrides):
    from train.backend_nxd import nxd_config_dict
    from train.stage_train import train_job

    golden = json.loads((GOLDEN / f"nxd_config_{model}.json").read_text())
    got = nxd_config_dict(train_job(compose(overrides).cfg, Path("run")))
    assert json.loads(json.dumps(got)) == golden
    assert set(golden) <= NXD_CONFIG_PARAMETERS
    # the plan prints the settings these dicts drive (no flags of NxD's own scripts)
    from launcher.plan import make_plan
    from launcher.validate import resolve_run_dir

    composed = compose([*overrides, "dry_run=true"])
    plan = make_plan(composed, resolve_run_dir(composed))
    train = next(s for s in plan.stages if s.stage == Stage.train)
    text = "; ".join(train.nxd_settings)
    assert f"tp {golden['tensor_parallel_size']}" in text and "ZeRO-1 on (fp32 master weights" in text
    assert ("NxDPPModel, 512 micro-batches" in text) == ("pipeline_config" in golden)
    assert "sequence parallel on (activations [S/32, B, H]" in text and "kv_size_multiplier=4, fuse_qkv=True" in text
    assert re.search(r"weights convert stage's shards \S+/checkpoints/pretrained_weight", text)
    assert train.nxd_args == [] and not any(s.startswith("--") for s in train.nxd_settings)


@pytest.mark.nxd
@requires_nxd
def test_config_parameter_names_are_those_of_the_real_neuronx_distributed_config():
    import inspect

    from neuronx_distributed.trainer import neuronx_distributed_config

    assert set(inspect.signature(neuronx_distributed_config).parameters) == NXD_CONFIG_PARAMETERS
