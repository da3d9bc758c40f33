"""Is a real neuronx-distributed (NxD) importable here? For tests marked `nxd`, which run NxD's own code on CPU
(NxD's CPU mode) and are skipped, with the reason, where it is not (CI, the main venv on torch 2.13).

NxD counts as importable when
- `NXD_SRC` names the src/ folder of an NxD source checkout (the folder holding `neuronx_distributed/`); it is then
  put on sys.path (and on PYTHONPATH, for the torchrun workers the tests start); or
- an installed `neuronx_distributed` is the real package, not the placeholder of the public package index;
and torch-xla imports beside torch (NxD imports it even in CPU mode). The Neuron-only modules NxD imports are
stubbed by tests/helpers/nxd_stubs.py when they are not really installed. tests/helpers/nxd_env.sh builds such an
environment.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import pytest

NXD_SRC_ENV = "NXD_SRC"


def _real_package_dir(spec: importlib.machinery.ModuleSpec) -> Path | None:
    """The package folder when it looks like NxD (has parallel_layers/ and trainer/), else None (the placeholder)."""
    for location in spec.submodule_search_locations or []:
        folder = Path(location)
        if (folder / "parallel_layers" / "layers.py").is_file() and (folder / "trainer").is_dir():
            return folder
    return None


def _add_to_paths(src: str) -> None:
    if src not in sys.path:
        sys.path.insert(0, src)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


@functools.cache
def nxd_importable() -> tuple[bool, str]:
    """(True, where NxD is) or (False, why not). Imports NxD (with stubs where needed) to make sure."""
    src = os.environ.get(NXD_SRC_ENV)
    if src:
        src = str(Path(src).resolve())
        folder = Path(src) / "neuronx_distributed"
        if not (folder / "__init__.py").is_file():
            return False, (
                f"{NXD_SRC_ENV}={src} has no neuronx_distributed/__init__.py: it must name the src/ folder of an "
                "NxD source checkout (github aws-neuron/neuronx-distributed)"
            )
    else:
        spec = importlib.util.find_spec("neuronx_distributed")
        if spec is None:
            return False, (
                f"neuronx_distributed is not installed and {NXD_SRC_ENV} is not set "
                "(see tests/helpers/nxd_env.sh for an NxD CPU-mode environment)"
            )
        folder = _real_package_dir(spec)
        if folder is None:
            return False, f"neuronx_distributed at {spec.origin} is the public index's placeholder, not NxD"
    if importlib.util.find_spec("torch_xla") is None:
        return False, "torch_xla is not installed (NxD needs torch-xla of the same release as torch, e.g. 2.9.0)"
    try:
        import torch
        import torch_xla
    except Exception as exc:  # e.g. torch-xla 2.9 beside torch 2.13: ABI error
        return False, f"torch_xla does not import here: {type(exc).__name__}: {exc}"
    if src:  # only now, so that a session that cannot use NxD does not get it on its paths
        _add_to_paths(src)
    if importlib.util.find_spec("torch_neuronx") is None or not _really_importable("torch_neuronx"):
        from tests.helpers.nxd_stubs import install_stubs

        install_stubs()
    try:
        import neuronx_distributed  # noqa: F401
    except Exception as exc:
        return False, f"neuronx_distributed ({folder}) does not import: {type(exc).__name__}: {exc}"
    return True, f"NxD from {folder} (torch {torch.__version__}, torch_xla {torch_xla.__version__})"


def _really_importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # the index's placeholder raises at import
        sys.modules.pop(name, None)
        return False
    return True


def _status() -> tuple[bool, str]:
    try:
        return nxd_importable()
    except Exception as exc:  # never break collection
        return False, f"checking for NxD failed: {type(exc).__name__}: {exc}"


_OK, _REASON = _status()
requires_nxd = pytest.mark.skipif(not _OK, reason=f"NxD not importable: {_REASON}")
"""Use with `pytest.mark.nxd`: `pytestmark = [pytest.mark.nxd, requires_nxd]`."""
