"""Method-aware defaults: the learning rate a trainer uses with a method unless ``trainer.learning_rate`` is given.

The rate is looked up by method family × objective: each trainer plugin declares a table
(:attr:`sllmx.interfaces.Trainer.learning_rates`, ``{family: (rate, source)}``) and each method plugin its
family (:attr:`sllmx.interfaces.Method.family`: ``adapter``, ``prompt`` or ``full``) and, where it trains
differently from its family, a factor (:attr:`sllmx.interfaces.Method.learning_rate_scale`).  The trainer
configs' ``learning_rate`` default is the interpolation ``${sllmx_learning_rate:${oc.select:method.name,null},
<trainer>,<fallback>}`` (registered in :mod:`sllmx.validate`), so an explicit value on the command line, in a
YAML or from a sweep replaces it; :func:`applied` tells a run's record which defaults were used and why.
docs/defaults.md has the table with its sources.
"""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

__all__ = ["learning_rate", "applied", "RESOLVER"]

#: the resolver's name; a ``learning_rate`` whose unresolved value starts with ``${RESOLVER:`` is a default
RESOLVER = "sllmx_learning_rate"


def _plugin(kind: str, name: Optional[str]) -> Any:
    if not name:
        return None
    from sllmx.plugins import registry

    entry = registry().entries[kind].get(str(name))
    return entry.obj if entry is not None else None


def learning_rate(method: Optional[str], trainer: str, fallback: float) -> tuple[float, str]:
    """The default learning rate of ``trainer`` with ``method`` and where it comes from.

    Args:
        method: a method plugin's name, or None (a trainer config on its own: the ``adapter`` family).
        trainer: a trainer plugin's name.
        fallback: the rate when the trainer's table has no row for the method's family.

    Returns:
        ``(rate, source)``: the trainer's rate for the family times the method's factor, with the sources of
        both; or ``(fallback, "the trainer config's default")``.
    """
    method_plugin = _plugin("method", method)
    legacy = getattr(method_plugin, "sft_learning_rate", None)  # before the family table (issue 19)
    if legacy is not None and trainer == "sft":
        return float(legacy), f"method={method}'s sft_learning_rate (superseded by Method.family and learning_rate_scale)"
    family = getattr(method_plugin, "family", "adapter")
    table = getattr(_plugin("trainer", trainer), "learning_rates", {}) or {}
    if family not in table:
        return float(fallback), f"trainer={trainer}'s default (no row for the {family} family)"
    rate, source = table[family]
    factor, why = getattr(method_plugin, "learning_rate_scale", (1.0, ""))
    text = f"{trainer} × {family}: {source}"
    if factor != 1.0:
        text += f"; × {factor:g} for {method}: {why}"
    return float(rate) * float(factor), text


def applied(cfg: DictConfig) -> dict[str, Any]:
    """The method-aware defaults in effect in ``cfg`` (a composed run config, unresolved interpolations kept):
    ``{"trainer.learning_rate": {"value", "source"}}`` when ``trainer.learning_rate`` is still the default
    interpolation, else ``{}`` (the user's value wins)."""
    trainer = cfg.get("trainer")
    if trainer is None or "learning_rate" not in trainer:
        return {}
    raw = OmegaConf.to_container(trainer, resolve=False).get("learning_rate")
    if not (isinstance(raw, str) and raw.startswith("${" + RESOLVER + ":")):
        return {}
    method = OmegaConf.select(cfg, "method.name", default=None)
    # the interpolation's own arguments: ...,<trainer>,<fallback>}
    name, fallback = raw[:-1].rsplit(",", 2)[-2:]
    _, source = learning_rate(method, name, float(fallback))
    return {"trainer.learning_rate": {"value": float(trainer.learning_rate), "source": source}}
