"""Test harness only: with this folder on PYTHONPATH and NXD_TEST_STUBS=1, every Python process (the torchrun
workers of the nxd tests) gets NxD's Neuron-only imports stubbed and NxD's three CPU-mode gaps patched
(tests/helpers/nxd_stubs.py), at the moment it first imports neuronx_distributed. The project's backend imports NxD
as it would on Trainium and patches nothing."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ("neuronx_distributed", "neuronx_distributed.trainer"):
            return None
        repo = str(Path(__file__).resolve().parents[3])
        if repo not in sys.path:
            sys.path.append(repo)
        from tests.helpers import nxd_stubs

        if fullname == "neuronx_distributed":
            nxd_stubs.install_stubs()
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            if os.environ.get("NXD_CPU_MODE") == "1":
                nxd_stubs.patch_cpu_mode_gaps()

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("NXD_TEST_STUBS") == "1":
    sys.meta_path.insert(0, _Hook())
