"""The distributions of a model's search space (``ModelSpec.search_space`` in the registry), one
per config key, that ``cml tune`` samples (:mod:`cml_dgl.tuning` turns them into Optuna calls).

* :class:`LogUniform` - a float, uniform in log space on [low, high]; with ``at_least`` the low end
  is raised to that other key's value in the same trial (``opt_max_lr`` at least ``opt_base_lr``,
  which the config requires);
* :class:`Uniform` - a float on a grid of ``step`` in [low, high]; with ``sum_at_most`` = (key,
  total) the high end is lowered to total minus that other key's value in the same trial
  (``cascade_alpha`` + ``cascade_beta`` at most 1, which CascadingRank requires);
* :class:`IntRange` - an integer in low..high (inclusive), in steps of ``step``;
* :class:`Choice` - one of a few values.

Plain data, no Optuna: the registry and the docs read them without the optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float
    at_least: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"LogUniform needs 0 < low <= high, got {self.low}, {self.high}")

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]" + (f", at least `{self.at_least}`" if self.at_least else "")

    def bounds(self) -> tuple[Any, Any]:
        return self.low, self.high


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    step: float
    sum_at_most: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        if not (self.low <= self.high and self.step > 0):
            raise ValueError(f"Uniform needs low <= high and step > 0, got {self.low}, {self.high}, {self.step}")

    def describe(self) -> str:
        text = f"[{self.low:g}, {self.high:g}] step {self.step:g}"
        if self.sum_at_most:
            key, total = self.sum_at_most
            text += f", at most {total:g} - `{key}`"
        return text

    def bounds(self) -> tuple[Any, Any]:
        return self.low, self.high

    def grid_high(self, cfg: Any) -> float:
        """The highest grid value allowed given the trial's values so far in ``cfg``."""
        high = self.high if self.sum_at_most is None else min(self.high, self.sum_at_most[1] - float(cfg[self.sum_at_most[0]]))
        return self.value(int((high - self.low) / self.step + 1e-9))

    def value(self, n: int) -> float:
        """The n-th grid value, rounded so that grid sums such as 0.3 + 0.7 stay exact."""
        return round(self.low + n * self.step, 12)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.low > self.high or self.step < 1:
            raise ValueError(f"IntRange needs low <= high and step >= 1, got {self.low}, {self.high}, {self.step}")

    def describe(self) -> str:
        return f"integer {self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "")

    def bounds(self) -> tuple[Any, Any]:
        return self.low, self.high


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("Choice needs at least one value")

    def describe(self) -> str:
        return "one of " + ", ".join(f"{c:g}" if isinstance(c, float) else str(c) for c in self.choices)

    def bounds(self) -> tuple[Any, Any]:
        return min(self.choices), max(self.choices)


Distribution = Union[LogUniform, Uniform, IntRange, Choice]
