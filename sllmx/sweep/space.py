"""The search space of a sweep: Hydra's extended override grammar (and ``hydra.sweeper.params``) as Optuna
distributions, and parameter values written back as overrides.

Reference: Hydra's extended override grammar (https://hydra.cc/docs/advanced/override_grammar/extended/), read
as Hydra's Optuna sweeper reads it (``create_optuna_distribution_from_override``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from sllmx.errors import SllmxError


@dataclass
class Param:
    """One swept parameter: its Optuna distribution and how to write a value back as an override."""

    name: str            # the config key or group, e.g. ``trainer.learning_rate`` or ``method``
    key: str             # as written on the command line, with any ``+``/``++`` prefix
    distribution: Any    # optuna.distributions.BaseDistribution
    grid: Optional[list] = None  # the finite values, for the grid sampler

    def override(self, value: Any) -> str:
        return f"{self.key}={format_value(value)}"


def format_value(value: Any) -> str:
    """A parameter value as Hydra override text (strings quoted unless they are plain words)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and math.isfinite(value):  # 0.15, not a stepped range's 0.15000000000000002
        return repr(float(f"{value:.15g}"))
    return str(value)


def parse_search_space(arguments: list[str], params: dict[str, str]) -> tuple[list[Param], list[str]]:
    """Split Hydra overrides into swept parameters and fixed overrides.

    Grammar (Hydra's, as in the Hydra Optuna sweeper): ``choice(a, b, ...)``, ``a,b,...`` and
    ``shuffle(...)`` → categorical; ``range(start, stop[, step])`` → int or float with a step
    (``stop`` excluded, as in Hydra's grammar and Python; Hydra's Optuna sweeper includes it);
    ``interval(low, high)`` → float, or int when cast with ``int(interval(...))``;
    ``tag(log, ...)`` samples on a log scale.
    ``params`` (``hydra.sweeper.params``, from a ``sweeps/`` file) use the same
    grammar; a command-line override of the same key replaces it.

    Returns:
        ``(params, fixed)``: the swept parameters in order, and the non-sweep overrides as written.

    Raises:
        SllmxError: for text the grammar rejects or a sweep Optuna cannot sample (list-valued or
            log-scaled choices; a log range with a step other than 1).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def parse(line: str) -> Any:
        try:
            return parser.parse_override(line)
        except HydraException as exc:
            raise SllmxError(f"cannot parse the override {line!r}: {str(exc).splitlines()[0]}") from None

    given = [parse(a) for a in arguments]
    given_keys = {o.key_or_group for o in given}
    from_params = [parse(f"{k}={v}") for k, v in params.items() if k not in given_keys]
    space, fixed = [], []
    for o in from_params + given:
        if o.is_sweep_override():
            space.append(Param(o.key_or_group, o.get_key_element(), *_distribution(o)))
        else:
            fixed.append(o.input_line)
    return space, fixed


def _distribution(override: Any) -> tuple[Any, Optional[list]]:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    name, value = override.key_or_group, override.value()
    log = "log" in value.tags
    if getattr(value, "shuffle", False) and isinstance(value, RangeSweep):
        # Hydra's Optuna sweeper: shuffle(range(...)) is a categorical over the range's values; sorted, so the
        # same command names the same study (order has no meaning to a sampler; shuffle(choice(...)) is the choice)
        value = ChoiceSweep(list=sorted(override.sweep_iterator()), tags=value.tags)
    if isinstance(value, ChoiceSweep):
        if log:
            raise SllmxError(f"{name}: tag(log, ...) applies to range() and interval(), not choice()")
        bad = [v for v in value.list if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise SllmxError(f"{name}: choice() values must be numbers, strings, booleans or null, not {bad[0]!r}")
        return CategoricalDistribution(list(value.list)), list(value.list)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step <= 0 or stop <= start:
            raise SllmxError(f"{name}: range({start}, {stop}, {step}) is empty; Optuna needs an increasing range")
        count = math.ceil((stop - start) / step - 1e-9)
        values = [start + i * step for i in range(count)]
        if all(isinstance(v, int) for v in (start, stop, step)):
            if log and step != 1:
                raise SllmxError(f"{name}: tag(log, range(...)) needs step 1")
            return IntDistribution(start, values[-1], log=log, step=1 if log else step), values
        if log:
            raise SllmxError(f"{name}: a float range() cannot be log-scaled; use tag(log, interval(low, high))")
        values = [round(v, 12) for v in values]
        return FloatDistribution(start, values[-1], step=step), values
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise SllmxError(f"{name}: interval({low}, {high}) is empty")
        if log and low <= 0:
            raise SllmxError(f"{name}: tag(log, interval({low}, {high})) needs a positive lower bound")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log), None
        return FloatDistribution(float(low), float(high), log=log), None
    raise SllmxError(f"{name}: unsupported sweep {value!r}")


def suggest(trial: Any, space: list[Param]) -> None:
    """Sample every parameter of ``space`` in ``trial`` (with its study's sampler); a re-queued trial
    (a killed worker's) gets back the parameters it was queued with."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for p in space:
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(p.name, d.choices)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
        else:
            trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)


def overrides_of(space: list[Param], params: dict[str, Any]) -> list[str]:
    """A trial's parameters as Hydra overrides, in the order of ``space``; then those ``custom_search_space``
    suggested, whose names are their override keys (``+w`` adds a key, as in Hydra's Optuna sweeper)."""
    names = {p.name for p in space}
    return [*(p.override(params[p.name]) for p in space if p.name in params),
            *(f"{name}={format_value(value)}" for name, value in params.items() if name not in names)]
