"""The nxd backend's parts that run without NxD (CI): its modules import cleanly and say to install the `neuron`
extra when NxD is absent or is the placeholder; the NxD config dicts of the 8B and 70B recipes; the memory per
NeuronCore in the plan (the issue's figures) and its agreement with the shape plan; the per-node launch; the
seed's 16-node job and NxD's 32-node variant one override away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.arithmetic import derive, nxd_params_per_core
from core.stages import Stage
from launcher.compose import compose
from model.nxd_plan import LLAMA3_8B, LLAMA3_70B, plan

ROOT = Path(__file__).resolve().parent.parent
SEED_70B = ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod"]
NXD_8B = ["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod", "cluster.nodes=4"]


def test_nxd_modules_import_without_nxd_and_name_the_neuron_extra(tmp_path):
    """A fake placeholder `neuronx_distributed` (as the public index ships it) first on the path: the backend and
    the model factory import; setup() fails with the install hint."""
    fake = tmp_path / "neuronx_distributed"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('placeholder package: install from the Neuron repository')")
    code = (
        "import train.backend_nxd as b, model.parallelize_nxd\n"
        "from core.config import JobConfig\n"
        "from train.config import Backend\n"
        "cfg = JobConfig(); cfg.trainer.backend = Backend.nxd\n"
        "from pathlib import Path\nfrom train.stage_train import train_job\n"
        "try:\n    b.NxDBackend(train_job(cfg, Path('run'))).setup()\n"
        "except b.NxDUnavailable as e:\n    print('ERR', e)\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR trainer.backend=nxd needs neuronx-distributed" in out.stdout
    assert "`neuron` extra" in out.stdout and "placeholder package" in out.stdout


def test_nxd_config_dicts_of_the_recipes():
    from train.backend_nxd import nxd_config_dict
    from train.stage_train import train_job

    c70 = nxd_config_dict(train_job(compose(SEED_70B).cfg, Path("run")))
    assert c70["tensor_parallel_size"] == 32 and c70["pipeline_parallel_size"] == 8
    assert c70["optimizer_config"] == {"zero_one_enabled": True, "grad_clipping": True, "max_grad_norm": 1.0}
    # the recipe's parallel.sequence_parallel (NxD's optimizer then all-reduces the norms' gradients over TP)
    assert c70["sequence_parallel"] is True and c70["activation_checkpoint_config"] == "selective"
    assert c70["model_init_config"]["meta_device_init"] is True  # 70B: each rank initialises its shards only
    assert c70["mixed_precision_config"] == {
        "use_master_weights": True,
        "use_fp32_grad_acc": True,
        "use_master_weights_in_ckpt": False,
    }
    assert c70["pipeline_config"]["num_microbatches"] == 512 and c70["pipeline_config"]["auto_partition"]
    c8 = nxd_config_dict(train_job(compose(NXD_8B).cfg, Path("run")))
    assert c8["tensor_parallel_size"] == 32 and c8["pipeline_parallel_size"] == 1 and "pipeline_config" not in c8
    assert c8["model_init_config"]["meta_device_init"] is False
    assert c8["optimizer_config"]["zero_one_enabled"] is True


@pytest.mark.parametrize(
    "overrides,params,gb",
    [(SEED_70B, 316_121_088, (0.632, 1.264, 1.897, 3.793)), (NXD_8B, 276_369_408, (0.553, 1.105, 0.829, 2.487))],
    ids=["70b-tp32-pp8-dp2", "8b-tp32-dp4"],
)
def test_memory_per_neuron_core(overrides, params, gb):
    d = derive(compose(overrides).cfg)
    mem = d.neuron_core
    assert mem.params == params
    got = tuple(round(x, 3) for x in (mem.weights_gb, mem.grads_gb, mem.optimizer_gb, mem.state_gb))
    assert got == gb
    assert mem.fits and mem.activations_gb > 0 and "34sbh/tp" in mem.activation_rule
    assert ("memory per NeuronCore", mem.describe()) in d.as_rows()


def test_params_per_core_agree_with_the_shape_plan():
    for arch, tp, pp, kvm in ((LLAMA3_70B, 32, 8, 4), (LLAMA3_8B, 32, 1, 4), (LLAMA3_70B, 8, 4, 1)):
        cfg = compose(["+model=llama3_70b" if arch is LLAMA3_70B else "+model=llama3_8b"]).cfg
        assert nxd_params_per_core(cfg.model, tp, pp, kvm) == plan(arch, tp, pp, kvm).max_params_per_rank()


def test_memory_refusal_names_the_fix():
    from launcher.validate import validate

    composed = compose([*SEED_70B, "parallel.pipeline_parallel_degree=1", "parallel.zero1=false", "cluster.nodes=1"])
    problems = "\n".join(validate(composed))
    assert (
        "the estimate per NeuronCore does not fit" in problems and "raise parallel.pipeline_parallel_degree" in problems
    )


def test_seed_job_and_nxd_variant_one_override_away():
    seed = derive(compose(SEED_70B).cfg)
    assert (seed.nodes, seed.world_size, seed.data_parallel, seed.batch_per_replica, seed.micro_batches) == (
        16,
        512,
        2,
        512,
        512,
    )
    variant = compose([*SEED_70B, "model.init=scratch", "cluster.nodes=32"]).cfg
    d = derive(variant)
    assert (d.world_size, d.data_parallel, d.batch_per_replica) == (1024, 4, 256)  # NxD's tutorial: dp 4
    from core.stages import applicable

    assert Stage.convert not in applicable(variant) and Stage.compile in applicable(variant)


def test_per_node_launch_of_the_seed_job():
    from launcher.nxd_env import node_command

    cmd = node_command(compose(SEED_70B).cfg, "/fsx/run", Stage.train)
    for part in (
        "--nproc_per_node=32",
        "--nnodes=16",
        '--node_rank="$SLURM_NODEID"',
        "--master_port=44000",
        "export XLA_DOWNCAST_BF16=1",
        "export NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS=7",
        "export MALLOC_ARENA_MAX=128",
        "export FI_PROVIDER=efa",
        "--cache_dir=/fsx/trainium-launcher/cache/neuron-compile-cache",
    ):
        assert part in cmd, part
    assert "sudo -n sysctl" in cmd  # the rendezvous port reserved (tests/test_nxd_golden.py pins the whole command)
    comp = node_command(compose([*SEED_70B, "cluster.neuron.malloc_arena_max=32"]).cfg, "/fsx/run", Stage.compile)
    assert "exec neuron_parallel_compile python -m torch.distributed.run" in comp and "MALLOC_ARENA_MAX=32" in comp
