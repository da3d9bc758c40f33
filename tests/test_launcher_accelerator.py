"""A local run's accelerator is checked against this machine at plan time (without importing torch in the
launcher), and the device count comes from the machine, not from a guess of 8 GPUs per node."""

from __future__ import annotations

import glob
import shutil
import sys

import pytest

from core.arithmetic import derive
from core.config import Accelerator
from launcher import validate as v
from launcher.compose import compose
from tests.helpers.cli import run_cli, tree


def _no_driver() -> bool:
    return not shutil.which("nvidia-smi") and not glob.glob("/dev/nvidia[0-9]*")


@pytest.mark.skipif(not _no_driver(), reason="this machine has an NVIDIA driver")
def test_cuda_without_a_gpu_is_one_clear_problem_and_nothing_is_written(isolated):
    proc = run_cli(["cluster.accelerator=cuda"], cwd=isolated)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "1 problem;" in proc.stderr, proc.stderr  # not also a batch problem computed for 8 phantom GPUs
    assert "no usable cuda device" in proc.stderr and "cluster.accelerator=cpu" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and tree(isolated) == []
    assert not (isolated.parent / "cache").exists()


def test_hidden_gpus_are_no_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    count, why = v.local_devices(Accelerator.cuda)
    assert count == 0 and "CUDA_VISIBLE_DEVICES" in why


def test_device_count_comes_from_the_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINIUM_LAUNCHER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(v, "local_devices", lambda acc: (2, "2 GPU(s) visible to torch"))
    composed = compose(["cluster.accelerator=cuda", "parallel=cpu_dp2"])
    assert v.validate(composed) == []
    d = derive(composed.cfg)
    assert (d.devices_per_node, d.world_size, d.data_parallel) == (2, 2, 2)


def test_neuron_without_devices_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINIUM_LAUNCHER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(v.glob, "glob", lambda pattern: [])
    problems = v.validate(compose(["cluster.accelerator=trn2"]))
    assert any("no usable trn2 device" in p and "/dev/neuron" in p for p in problems), problems


def test_cpu_and_cluster_plans_are_not_probed(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINIUM_LAUNCHER_CACHE", str(tmp_path / "cache"))

    def boom(acc):
        raise AssertionError("probed")

    monkeypatch.setattr(v, "local_devices", boom)
    assert v.validate(compose([])) == []
    v.validate(compose(["+model=llama3_8b", "parallel=tp32_zero1", "cluster=hyperpod", "dry_run=true"]))


def test_the_check_does_not_import_torch_in_the_launcher(tmp_path):
    code = (
        "import sys\n"
        "from launcher import validate as v\n"
        "from core.config import Accelerator\n"
        "v.local_devices(Accelerator.cuda)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    import subprocess

    from tests.helpers.cli import ROOT

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
