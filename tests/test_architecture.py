"""The dependency rule of DESIGN.md section 2, checked over every import statement of the product packages.

- core/ (the shared vocabulary) imports only the standard library and the owners' config modules;
- each `<package>/config.py` imports only the standard library (and core.stages for the stage names);
- model/ imports torch and its own modules only;
- the library modules of data/ and checkpoint/ import neither launcher/ nor train/ (their `stage_*` adapters
  may import train's config);
- train/ imports model, data, checkpoint and core, never launcher;
- nothing outside launcher/ imports launcher/;
- no cycles between these parts (each config module and each stage adapter is a part of its own).
Imports under `if TYPE_CHECKING:` are not dependencies at run time and are skipped.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "model", "data", "checkpoint", "train", "launcher")
CONFIGS = ("model.config", "data.config", "train.config")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            out[name] = f
    return out


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def part(module: str) -> str | None:
    """The part of the architecture a module belongs to (None: not ours)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    for c in CONFIGS:
        if module == c:
            return c
    if top != "core" and module.startswith(f"{top}.stage_"):
        return f"{top}.stage"
    return top


def _own(imported: set[str], modules: dict[str, Path]) -> set[str]:
    """Our modules among the imported names (a `from pkg import name` counts when pkg.name is a module)."""
    return {m for m in imported if m in modules}


ALLOWED: dict[str, set[str]] = {
    "core": {"core", *CONFIGS},
    "model.config": set(),
    "data.config": set(),
    "train.config": set(),
    "model": {"model", "model.config"},
    "data": {"data", "data.config", "core", *CONFIGS},
    "checkpoint": {"checkpoint", "core", "model", *CONFIGS},
    "data.stage": {"data", "data.config", "core", *CONFIGS},
    "checkpoint.stage": {"checkpoint", "checkpoint.stage", "core", "model", *CONFIGS},
    "train": {"train", "model", "data", "checkpoint", "core", *CONFIGS},
    "train.stage": {"train", "model", "data", "checkpoint", "core", *CONFIGS},
}


def edges() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        src = part(name)
        assert src is not None
        graph.setdefault(src, set())
        for dep in _own(_imports(path), mods):
            dst = part(dep)
            if dst and dst != src:
                graph[src].add(dst)
    return graph


def test_every_part_imports_only_what_the_rule_allows():
    mods = _modules()
    problems = []
    for name, path in mods.items():
        src = part(name)
        if src == "launcher":
            continue
        for dep in sorted(_own(_imports(path), mods)):
            dst = part(dep)
            if dst != src and dst not in ALLOWED[src]:
                problems.append(f"{path.relative_to(ROOT)} ({src}) imports {dep} ({dst})")
    assert not problems, "\n".join(problems)


def test_config_and_core_modules_import_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    mods = _modules()
    problems = []
    for name, path in mods.items():
        if part(name) not in ("core", *CONFIGS):
            continue
        for imp in _imports(path):
            top = imp.split(".")[0]
            if top not in stdlib and top not in PACKAGES:
                problems.append(f"{path.relative_to(ROOT)} imports {imp}")
    assert not problems, "\n".join(problems)


def test_no_cycles_between_parts():
    graph = edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m) :], m]))
            if not state.get(m):
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n)


def test_every_registered_entrypoint_resolves_with_the_one_signature():
    import importlib
    import inspect

    from core.stages import SPECS

    for stage, spec in SPECS.items():
        module, func = spec.entrypoint.split(":")
        assert module.split(".")[-1] == f"stage_{stage.value}", spec.entrypoint
        fn = getattr(importlib.import_module(module), func)
        assert func == "run" and list(inspect.signature(fn).parameters) == ["cfg", "ctx"], spec.entrypoint


LIBRARIES = {
    "model": ["model.llama3", "model.parallelize_torch"],
    "checkpoint": ["checkpoint.convert", "checkpoint.train_state", "checkpoint.export", "checkpoint.hf_load"],
    "data": ["data.encode", "data.sources", "data.prepare", "data.loader"],
    "train": ["train.stage_train", "train.loop", "train.backend_torch"],
}


def test_libraries_load_no_hydra_or_omegaconf():
    """One interpreter imports the libraries one after another and records, after each, what of Hydra, OmegaConf
    and the launcher is loaded: the first library that pulls one in is named (imports only ever add modules)."""
    code = (
        "import importlib, json, sys\n"
        "seen = {}\n"
        f"for lib, mods in {LIBRARIES!r}.items():\n"
        "    for m in mods: importlib.import_module(m)\n"
        "    seen[lib] = sorted({k.split('.')[0] for k in sys.modules} & {'hydra', 'omegaconf', 'launcher'})\n"
        "print(json.dumps(seen))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {lib: [] for lib in LIBRARIES}


def test_the_shared_vocabulary_loads_no_third_party_module():
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import core.config, core.paths, core.marker, core.publish, core.arithmetic, core.nxd_args, core.fingerprint\n"
        "tops = {k.split('.')[0] for k in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith('_'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout)) <= {"core", "model", "data", "train"}
