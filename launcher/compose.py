"""Compose conf/ + command-line overrides into a typed JobConfig, and say where each value came from.

Uses Hydra's compose API rather than @hydra.main: we want our own wording for composition errors (exit 2, no
traceback), no output folders, and no Hydra logging, and the compose API gives all three without patching.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from core.config import ClusterConfig, JobConfig
from data.config import DataConfig
from model.config import ModelConfig, ParallelConfig

# Groups with a schema: each YAML of conf/<group>/ extends `schema/<group>/base`, so a misspelt key in a file is
# an error. The schemas live in their own `schema/` group so `--help` lists only the real options.
GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "cluster": ClusterConfig,
}

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Groups the user picks on the command line, in the order the help lists them.
USER_GROUPS = ("model", "parallel", "data", "cluster", "recipe")


class ConfigError(ValueError):
    """One or more user errors in the configuration; each problem is one paragraph."""

    def __init__(self, problems: list[str]):
        super().__init__("\n\n".join(problems))
        self.problems = problems


@dataclass
class Composed:
    cfg: JobConfig
    # Selected option per group, e.g. {"model": "llama3_70b", "recipe": "llama3_70b", "parallel": "tp32_pp8"}.
    choices: dict[str, str]
    overrides: list[str]

    def source(self, key: str) -> str:
        """Where a dotted key's value came from: the command line, a group option, the recipe, or the schema."""
        if any(key == k or key.startswith((k + ".", k + "[")) for k in _value_keys(self.overrides)):
            return "command line"
        top = key.split(".", 1)[0].split("[", 1)[0]
        recipe = self.choices.get("recipe", "")
        if recipe and _yaml_sets(f"recipe/{recipe}.yaml", key):
            via = f", selected by model={self.choices['model']}" if "model" in self.choices else ""
            return f"recipe={recipe}{via}"
        if top in GROUPS:
            choice = self.choices.get(top)
            if choice and _yaml_sets(f"{top}/{choice}.yaml", key.split(".", 1)[1] if "." in key else ""):
                return f"{top}={choice}"
            return f"{top}={choice}" if choice else f"the schema default of {top}"
        return "the default"


def _value_keys(overrides: list[str]) -> list[str]:
    """Keys the command line sets a value for (group selections such as cluster=hyperpod set no value)."""
    names = [o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] for o in overrides]
    return [n for n in names if n not in USER_GROUPS]


def register() -> None:
    """Register the typed schemas with Hydra's ConfigStore, once per process: storing converts each dataclass to
    a structured config (a quarter of a composition's time), and the store outlives GlobalHydra.clear()."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    if "base_config.yaml" in cs.repo:
        return
    # One conversion of the dataclasses: each group's schema is that section of the whole (copying a node is
    # cheaper than converting its dataclass again).
    base = OmegaConf.structured(JobConfig)
    cs.store(name="base_config", node=base)
    for group in GROUPS:
        cs.store(group=f"schema/{group}", name="base", node=base[group], package=group)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _yaml_sets(rel: str, key: str) -> bool:
    if not key:
        return False
    from omegaconf import OmegaConf

    path = CONF_DIR / rel
    if not path.exists():
        return False
    node = OmegaConf.load(path)
    return OmegaConf.select(node, key, default=None, throw_on_missing=False) is not None


def compose(overrides: list[str]) -> Composed:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    _precheck(overrides)
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            raw = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
        runtime_choices = OmegaConf.to_container(raw.hydra.runtime.choices)
        assert isinstance(runtime_choices, dict)
        choices = {
            str(k): str(v) for k, v in runtime_choices.items() if not str(k).startswith("hydra/") and v is not None
        }
        with _open(raw):
            del raw["hydra"]
        cfg = OmegaConf.to_object(raw)
    except Exception as exc:  # Hydra/OmegaConf raise many types; all are user errors here.
        raise ConfigError([_reword(exc, overrides)]) from None
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(cfg, JobConfig)
    # Relative corpus paths mean "from where the user typed the command": pin them now, so that stage jobs
    # (whatever their working folder) read the same files and two folders' `corpus/*.txt` are two datasets.
    cfg.data.paths = [os.path.abspath(os.path.expanduser(p)) for p in cfg.data.paths]
    return Composed(cfg=cfg, choices=choices, overrides=list(overrides))


def _open(node):
    from omegaconf import open_dict

    return open_dict(node)


def _precheck(overrides: list[str]) -> None:
    """Catch the commonest mistakes before Hydra, with a better message than Hydra's."""
    problems = []
    for ov in overrides:
        if "=" not in ov:
            problems.append(
                f"Command-line argument '{ov}' is not an override. Every argument has the form key=value "
                f"(e.g. optim.lr=3e-4) or group=option (e.g. parallel=tp32_pp8); the subcommands status and "
                f"cancel must come first (python -m launcher status RUN)."
            )
            continue
        key, value = ov.split("=", 1)
        if key == "model":
            problems.append(
                f"model={value} (command line): the model group is appended, not overridden, because it is "
                f"not in the defaults list (its default is the tiny model). Write +model={value}. "
                f"Options: {', '.join(options('model'))}."
            )
        plain = key.lstrip("+")
        if key.startswith("+") and plain != "model":
            problems.append(
                f"{ov} (command line): '+' appends a new key, but the configuration is typed and only the model "
                f"group is appended (+model=NAME). Fix: write {plain}={value} to set an existing key "
                f"(python -m launcher --cfg job lists them all)."
            )
        if plain in USER_GROUPS and "." not in plain and value not in options(plain) and "," not in value:
            problems.append(_unknown_option(plain, value))
    if problems:
        raise ConfigError(problems)


def _unknown_option(group: str, value: str) -> str:
    opts = options(group)
    close = difflib.get_close_matches(value, opts, n=1)
    hint = f" Did you mean {group}={close[0]}?" if close else ""
    plus = "+" if group == "model" else ""
    return (
        f"{group}={value} (command line): there is no option '{value}' in the {group} group (no file "
        f"conf/{group}/{value}.yaml).{hint} Valid options: {', '.join(opts)}. "
        f"Fix: pick one, e.g. {plus}{group}={close[0] if close else opts[0]}."
    )


def _schema_at(path: list[str]) -> type | None:
    node: Any = JobConfig
    for part in path:
        if not is_dataclass(node):
            return None
        ftypes = {f.name: f for f in fields(node)}
        if part not in ftypes:
            return None
        node = _field_type(node if isinstance(node, type) else type(node), part)
    return node


def _field_type(cls: type, name: str) -> Any:
    import typing

    hints = typing.get_type_hints(cls)
    return hints.get(name)


def _valid_keys(path: list[str]) -> list[str]:
    node = _schema_at(path)
    return [f.name for f in fields(node)] if node is not None and is_dataclass(node) else []


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    x: BaseException | None = exc
    while x is not None and x not in out:
        out.append(x)
        x = x.__cause__ or x.__context__
    return out


def _reword(exc: Exception, overrides: list[str]) -> str:
    chain = _chain(exc)
    outer = str(exc).strip()
    inner = next((e for e in chain if getattr(e, "full_key", None)), None)
    key = getattr(inner, "full_key", "") if inner is not None else ""
    msg = str(inner).strip().splitlines()[0] if inner is not None else outer.splitlines()[0] if outer else ""
    where = re.search(r"In '([^']+)'", outer)
    on_cli = any(key == k or key.startswith((k + "[", k + ".")) for k in _value_keys(overrides))
    origin = "command line" if on_cli else f"conf/{where.group(1)}.yaml" if where else "a config file"
    m = re.search(r"Key '([^']+)' (?:not in|is not in struct)", msg)
    if m:
        bad = m.group(1)
        if not key:
            key = bad
        if where and not on_cli and where.group(1).split("/")[0] in GROUPS and "." not in key:
            key = f"{where.group(1).split('/')[0]}.{bad}"
        parent = key.split(".")[:-1]
        valid = _valid_keys(parent)
        close = difflib.get_close_matches(bad, valid, n=1)
        hint = f" Did you mean {'.'.join([*parent, close[0]])}?" if close else ""
        section = ".".join(parent) or "the top level"
        return (
            f"{key} ({origin}): there is no key '{bad}' in {section}.{hint} "
            f"Valid keys of {section}: {', '.join(valid) if valid else '(none)'}. "
            f"Fix: correct the spelling; a misspelt key is an error so that it is never silently ignored."
        )
    m = re.search(r"Could not find '([^/']+)/([^']+)'", outer)
    if m:
        return _unknown_option(m.group(1), m.group(2))
    value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key.split("[")[0]), "")
    m = re.search(r"Value '([^']*)' of type '\w+' could not be converted to (\w+)", msg)
    if m:
        return (
            f"{key}={m.group(1)} ({origin}): {key} must be of type {m.group(2)}. "
            f"Fix: give {_article(m.group(2))} {m.group(2).lower()} value, e.g. {key}={_example(m.group(2))}."
        )
    m = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", msg)
    if m:
        shown = f"{key}={value}" if value else f"{key}={m.group(1)}"
        return (
            f"{shown} ({origin}): '{m.group(1)}' is not a valid value; it must be one of [{m.group(2)}]. "
            f"Fix: e.g. {key.split('[')[0]}={_example_enum(key, m.group(2))}."
        )
    if "is not a ListConfig" in msg:
        return (
            f"{key}={value} ({origin}): {key} is a list. Fix: write it in brackets, e.g. {key}=[{value}] "
            f"(quote it in the shell if it contains spaces)."
        )
    return (
        f"The configuration could not be composed: {msg or type(exc).__name__} "
        f"Fix: check the overrides {' '.join(overrides) or '(none)'}; `python -m launcher --help` lists the "
        f"groups and their options, `python -m launcher --cfg job` prints the composed config."
    )


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _example_enum(key: str, choices: str) -> str:
    first = choices.split(",")[0].strip()
    return f"[{first}]" if "[" in key else first


def _example(type_name: str) -> str:
    return {"Integer": "8", "Float": "3e-4", "Boolean": "true"}.get(type_name, "...")
