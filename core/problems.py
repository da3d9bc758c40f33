"""A problem with an input, as every rule reports it: the key, the bad value, the rule it breaks and a fix.

The libraries own their rules as torch-free functions returning lists of `Problem`s: they raise them at run time
(`raise_if`) and the launcher reports them at plan time, adding where each value came from, so a user reads the
same sentence wherever a rule fires. (model/ may import only its own modules: its rules return plain
`(key, value, rule, fix)` tuples, the same shape.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple


class Problem(NamedTuple):
    # The key in the caller's vocabulary: a config key (`data.paths`) or a tool's flag (`--tp_size`).
    key: str
    value: object
    # What the value breaks, as a sentence.
    rule: str
    # What to do instead, as a sentence.
    fix: str


def show(value: object) -> str:
    """A value as the user types it: enums by value, lists as [a,b]."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return "[" + ",".join(show(x) for x in value) + "]"
    return str(value)


def describe(problem: Problem | tuple[str, object, str, str], source: str = "") -> str:
    """`key=value (from source): rule Fix: fix`; `source` is where the value came from, when known."""
    key, value, rule, fix = problem
    where = f" (from {source})" if source else ""
    return f"{key}={show(value)}{where}: {rule} Fix: {fix}"


def raise_if(problems: Iterable[Problem], error: type[ValueError] = ValueError, intro: str = "") -> None:
    """Raise `error` naming every problem, one sentence group each, when there is any."""
    found = list(problems)
    if found:
        raise error(intro + " ".join(describe(p) for p in found))


def divisors(n: int, limit: int = 64) -> list[int]:
    """The divisors of `n` up to `limit`, the degrees a fix can offer."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


@dataclass(frozen=True)
class Range:
    """A declarative range rule: the value at `key` must be at least `at_least` (or above `above`), below
    `below` when given, or equal `special`'s value, whose meaning is documented where the field is declared."""

    key: str
    fix: str
    at_least: float | None = None
    above: float | None = None
    below: float | None = None
    special: tuple[int, str] | None = None
    # Why the bound, when it is not obvious (shown in brackets).
    why: str = ""

    def ok(self, value: float) -> bool:
        if self.special is not None and value == self.special[0]:
            return True
        low_ok = value > self.above if self.above is not None else value >= (self.at_least or 0)
        return low_ok and (self.below is None or value < self.below)

    @property
    def rule(self) -> str:
        if self.below is not None:
            span = f"in [{self.at_least or 0:g}, {self.below:g})"
        elif self.above is not None:
            span = "positive" if self.above == 0 else f"above {self.above:g}"
        else:
            span = f"at least {self.at_least or 0:g}"
        either = f"{self.special[0]} ({self.special[1]}) or " if self.special else ""
        why = f" ({self.why})" if self.why else ""
        return f"must be {either}{span}{why}."

    def problems(self, value: float) -> list[Problem]:
        return [] if self.ok(value) else [Problem(self.key, value, self.rule, self.fix)]
