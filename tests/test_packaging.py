"""The top-level packages have generic names (launcher, model, data, checkpoint, train): make sure the ones
imported are this checkout's and that no installed distribution ships a package of the same name."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import packages_distributions

from tests.helpers.cli import ROOT

PACKAGES = ["launcher", "model", "data", "checkpoint", "train"]


def test_no_installed_distribution_shadows_our_packages():
    owners = packages_distributions()
    for name in PACKAGES:
        others = [d for d in owners.get(name, []) if d != "trainium-launcher"]
        assert not others, f"installed distribution(s) {others} also provide a top-level '{name}' package"


def test_packages_resolve_to_this_checkout_from_any_directory(tmp_path):
    code = f"import importlib; print('\\n'.join(importlib.import_module(n).__file__ for n in {PACKAGES!r}))"
    env_path = {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env_path},
    )
    assert proc.returncode == 0, proc.stderr
    for name, path in zip(PACKAGES, proc.stdout.split()):
        assert path.startswith(str(ROOT / name)), f"{name} imported from {path}"


def test_conf_is_found_next_to_the_packages():
    from launcher.compose import CONF_DIR

    assert CONF_DIR == ROOT / "conf" and (CONF_DIR / "config.yaml").is_file()
