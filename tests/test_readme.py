"""The README and docs/ say only what is true of the code (issue 10, item 13).

- Every command the README lists under "Using it" runs and exits 0, in an isolated folder (its own cwd, cache
  and runs folder), as written: cluster jobs as the dry runs the README writes, `RUN` replaced by the run
  folder of the default run. The two long ones (the default run, twice, and `parallel=cpu_dp2_tp2
  trainer.max_steps=50`) are marked slow.
- Every file path (`checkpoint/convert.py`, `tests/x.py::test_y`) and module reference (`data.prepare`,
  `train.signals.EXIT_REQUEUE`, `train.stage_train:run`) in README.md and docs/*.md exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, run_cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("core", "launcher", "model", "data", "checkpoint", "train", "tests", "bench")
TOP = (*PACKAGES, "conf", "docs", ".ci")
LONG = ("", "parallel=cpu_dp2_tp2 trainer.max_steps=50")


def using_it() -> list[str]:
    """The commands of the README's "Using it" section, in order, without their comments."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        if line.startswith("    python -m launcher"):
            out.append(line.split("#", 1)[0].strip())
    return out


def _args(command: str, run: Path) -> list[str]:
    words = shlex.split(command.replace("[RUN]", str(run)).replace("RUN", str(run)))
    assert words[:3] == ["python", "-m", "launcher"], command
    return words[3:]


def _isolated_env(tmp: Path) -> dict[str, str]:
    # The runs folder of cluster=local is relative to the cwd; the cache is the test's own.
    return {"TRAINIUM_LAUNCHER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}


def test_the_readme_lists_the_commands_this_test_runs():
    cmds = using_it()
    assert len(cmds) >= 10, cmds
    assert {c.removeprefix("python -m launcher").strip() for c in cmds} >= set(LONG)


@pytest.mark.parametrize(
    "command", [c for c in using_it() if c.removeprefix("python -m launcher").strip() not in LONG and "RUN" not in c]
)
def test_quick_readme_command_exits_0(command, isolated):
    proc = run_cli(_args(command, isolated / "runs"), isolated, env=_isolated_env(isolated.parent), timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not (isolated.parent / "cache" / "datasets").exists()  # dry runs and --help/--cfg write nothing


@pytest.mark.slow
def test_long_readme_commands_exit_0_in_order(isolated):
    """The default run, its rerun, status and cancel of that run, then the data x tensor parallel run."""
    env = _isolated_env(isolated.parent)
    run = isolated / "runs" / "tiny-none-local"
    for command in using_it():
        rest = command.removeprefix("python -m launcher").strip()
        if rest not in LONG and "RUN" not in command:
            continue
        proc = run_cli(_args(command, run), isolated, env=env, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if rest == "":
            assert (run / "export" / "model.safetensors").is_file()
    assert (isolated / "runs" / "tiny-cpu_dp2_tp2-local" / "export" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------- references in docs

# Source and doc files of the checkout (outputs such as `model/dp_rank_00_...pt` or TensorBoard tags such as
# `train/loss` have other endings), folders of conf/, and CI's script.
FILE_REF = re.compile(
    r"(?<![\w/.<>{}-])((?:(?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./-]*\.(?:py|md|yaml|toml)(?:::\w+)?)"
    r"|conf/\w+/|\.ci/run)"
)
DOTTED = re.compile(r"(?<![\w/.<>{}-])((?:" + "|".join(PACKAGES) + r")\.[\w.]+(?::\w+)?)")
# Dotted names that are files, not modules (model.safetensors, data.jsonl ...).
FILE_SUFFIXES = (".safetensors", ".json", ".jsonl", ".py", ".pt", ".txt", ".yaml", ".parquet", ".md", ".arrow", ".bin")


def _config_keys() -> set[str]:
    """Every dotted config key (model.vocab_size, data.paths, model.rope_scaling.factor, ...)."""
    from dataclasses import is_dataclass

    from core.config import JobConfig

    out: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            key = f"{prefix}{f.name}"
            out.add(key)
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if is_dataclass(default):
                walk(type(default), key + ".")

    walk(JobConfig, "")
    return out


def _hf_keys() -> set[str]:
    from checkpoint.hf_adapter import FROM_HF

    return set(FROM_HF)


def _resolves(ref: str) -> bool:
    """`pkg.module[.attr...]` or `pkg.module:attr` names a module and (nested) attributes that exist."""
    ref, _, func = ref.partition(":")
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not str(spec.origin or "").startswith(str(ROOT)):
            continue
        obj = importlib.import_module(name)
        for attr in [*parts[i:], *filter(None, [func])]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _references() -> list[tuple[str, str, str]]:
    """(doc, kind, reference) for every file path and dotted module name the docs mention."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FILE_REF.finditer(text):
            ref = m.group(1).rstrip(".,:;")
            if not any(c in ref for c in "*?"):
                out.append((doc.name, "file", ref))
        for m in DOTTED.finditer(text):
            ref = m.group(1).rstrip(".,:;")
            if ref.endswith(FILE_SUFFIXES) or "{" in text[m.end() : m.end() + 1]:
                continue
            out.append((doc.name, "module", ref))
    return out


def test_docs_find_references_at_all():
    refs = {r for _, _, r in _references()}
    # The extraction itself works: known references are found (a regex that matched nothing would pass below).
    assert {"checkpoint/convert.py", "checkpoint.convert", "tests/test_model_checkpoint.py"} <= refs, sorted(refs)


def test_every_path_and_module_the_docs_name_exists():
    config_keys, hf_keys = _config_keys(), _hf_keys()
    missing = []
    for doc, kind, ref in _references():
        if kind == "file":
            path, _, test = ref.partition("::")
            target = ROOT / path
            if not target.exists():
                missing.append(f"{doc}: {ref} (no such file or folder)")
            elif test and not re.search(rf"^def {re.escape(test)}\(", target.read_text(), re.M):
                missing.append(f"{doc}: {ref} (no test {test} in {path})")
        elif ref not in config_keys and ref not in hf_keys and not _resolves(ref):
            missing.append(f"{doc}: {ref} (neither a module/attribute, a config key nor an HF key)")
    assert not missing, "\n".join(missing)
