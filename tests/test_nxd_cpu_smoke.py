"""NxD's real code runs here, in its CPU mode (NXD_CPU_MODE=1, eager CPU tensors, gloo), at TP 2 under torchrun:
parallel_state, ColumnParallelLinear + RowParallelLinear, GQAQKVColumnParallelLinear with kv_size_multiplier, and
the trainer API (neuronx_distributed_config, initialize_parallel_model, initialize_parallel_optimizer) give what
plain torch gives on the unsharded weights; save_checkpoint/load_checkpoint resume exactly.

Needs NxD (see tests/helpers/nxd_available.py and nxd_env.sh): skipped with the reason where it is absent.
    NXD_SRC=/path/to/neuronx-distributed/src /path/to/nxd-venv/bin/python -m pytest -m nxd tests/test_nxd_cpu_smoke.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nxd_available import requires_nxd

pytestmark = [pytest.mark.nxd, pytest.mark.distributed, requires_nxd]

WORKER = Path(__file__).resolve().parent / "helpers" / "nxd_cpu_smoke_worker.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def tp2(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("nxd_tp2")
    env = {**os.environ, "NXD_CPU_MODE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    print(json.dumps(ranks, indent=1))
    return {"ranks": ranks}


def test_parallel_state_tp2(tp2):
    for r, res in enumerate(tp2["ranks"]):
        assert (res["tp_size"], res["tp_rank"], res["dp_size"]) == (2, r, 1)


def test_column_row_parallel_match_torch(tp2):
    for res in tp2["ranks"]:
        cr = res["col_row"]
        assert cr["local_weight_shapes"] == [[6, 8], [8, 6]]
        for key in ("out", "grad_input", "grad_col_weight", "grad_row_weight"):
            assert cr[key] < TOL, (key, cr[key])


def test_gqa_qkv_kv_multiplier_match_torch(tp2):
    for res in tp2["ranks"]:
        gqa = res["gqa_qkv"]
        # q rows 4 heads x 2 / tp 2 = 4; k and v: 1 KV head x 2 x kvm 2 / tp 2 = 2 each.
        assert gqa["weight_qkv_shape"] == [8, 6]
        assert gqa["layout"] == 0.0
        # The input gradient is the replicated computation's; each K/V replica's weight gradient is the sum over
        # the KV-shared group (see the worker). Needs the test harness's CPU-mode gap 3 (tests/helpers/nxd_stubs.py).
        for key in ("q", "k", "v", "grad_input", "grad_weight_qkv"):
            assert gqa[key] < TOL, (key, gqa[key])


def test_trainer_api_tp2_matches_torch(tp2):
    for res in tp2["ranks"]:
        tr = res["trainer"]
        assert tr["param_devices"] == ["cpu"]  # patch_cpu_mode_gaps: not the XLA device
        assert len(tr["nxd_losses"]) == 5
        assert tr["loss"] < TOL, (tr["nxd_losses"], tr["ref_losses"])
        assert tr["grad_norm"] < TOL, (tr["nxd_grad_norms"], tr["ref_grad_norms"])
        assert tr["final_head_weight"] < TOL
        assert tr["nxd_losses"][-1] < tr["nxd_losses"][0]


def test_trainer_checkpoint_resume_exact(tp2):
    for res in tp2["ranks"]:
        tr = res["trainer"]
        assert tr["resume"] == 0.0, (tr["resumed_losses"], tr["nxd_losses"])
        files = tr["checkpoint_files"]
        for tp_rank in (0, 1):
            assert any(
                f"dp_rank_00_tp_rank_0{tp_rank}_pp_rank_00" in f and f.startswith("step_3/model/") for f in files
            )
        assert "step_3/done" in files, files
