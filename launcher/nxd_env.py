"""Environment of the NxD (trn1) training and compile jobs, as the NxD Llama 3 example scripts export it.

The 70B script (TP x PP) and the 8B script (TP + ZeRO-1) differ in a few values; we follow the one whose layout
the config uses (pipeline parallel or not). Neuron's compile cache goes to the shared cache folder so every node
and every rerun reuses it.
"""

from __future__ import annotations

from core.config import JobConfig
from train.config import Precision


def nxd_env(cfg: JobConfig, cache_dir: str) -> dict[str, str]:
    pipeline = cfg.parallel.pipeline_parallel_degree > 1
    env = {
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "FI_PROVIDER": "efa",
        "FI_EFA_FORK_SAFE": "1",
        "NEURON_FUSE_SOFTMAX": "1",
        "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS": "7" if pipeline else "3",
        # Host OOM mitigation from the example scripts.
        "MALLOC_ARENA_MAX": "128" if pipeline else "64",
        "NEURON_CC_FLAGS": f"--model-type=transformer --cache_dir={cache_dir}/neuron-compile-cache",
    }
    if pipeline:
        # Closes a ~3% ZeRO-1 convergence gap on PT 2.1 (comment in run_llama3_70B_tp_pp.sh).
        env["XLA_DISABLE_FUNCTIONALIZATION"] = "0"
    if cfg.trainer.precision == Precision.bf16:
        # fp32 torch tensors become bf16 on device; master weights stay fp32 (ZeRO-1 mixed precision).
        env["XLA_DOWNCAST_BF16"] = "1"
    return env
