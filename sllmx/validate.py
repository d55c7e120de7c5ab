"""Check the composed config against the ranges its dataclasses declare, before a run loads anything.

Every config node of a run (``model``, ``data``, ``method``, ``trainer``, ``logger``, ``eval``, ``trial``
and the top level) is typed by a dataclass (:mod:`sllmx.config`, or a plugin's).  Its fields declare
their allowed values in their metadata, written with :func:`sllmx.config.option`:

* ``gt``, ``ge``, ``lt``, ``le``: bounds of a number (``method.r`` ``ge=1``; a fraction ``ge=0, lt=1``);
* ``choices``: the allowed values (of every item, for a list such as ``trainer.loss_type``);
* ``plugin``: a plugin kind whose registered names are allowed (``data.format``: ``plugin="format"``).

``None`` passes where the field is ``Optional``.  Rules that involve several fields live in the
dataclass's ``check(self, key) -> Optional[str]`` method: it is called on an instance built from the
node (``key`` is the node's place in the config, e.g. ``trainer``) and returns the error line or
None.  A third-party plugin's config gets the same checks by declaring the same metadata and method.

Nothing here imports torch: ``run()`` calls :func:`validate_config` first, so a bad value stops the
command in well under a second, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sllmx.config import CONSTRAINTS
from sllmx.errors import SllmxError


def allowed(meta: typing.Mapping[str, Any], optional: bool = False, names: Optional[list[str]] = None) -> str:
    """The allowed range in words, as the error line and ``--help`` say it: ``>= 1``, ``in [0, 1)``,
    ``one of none, all, lora_only``; ``, or null`` for an ``Optional`` field.

    ``names`` are the registered names of ``meta["plugin"]`` (added to ``choices``).  Returns ``""``
    when the metadata declares no constraint.
    """
    parts = []
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = (meta["le"], "]") if "le" in meta else (meta["lt"], ")") if "lt" in meta else None
    if low and high:
        parts.append(f"in {low[0]}{_fmt(low[1])}, {_fmt(high[0])}{high[1]}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {_fmt(low[1])}")
    elif high:
        parts.append(f"{'<=' if high[1] == ']' else '<'} {_fmt(high[0])}")
    values = [*meta.get("choices", ()), *(names or [])]
    if values:
        parts.append("one of " + ", ".join(_fmt(v) for v in values))
    elif "plugin" in meta:
        parts.append(f"a {meta['plugin']} plugin name")
    if parts and optional:
        parts.append("or null")
    return ", ".join(parts)


def _fmt(value: Any) -> str:
    """A value as it is typed on the command line (``null``, ``true``, ``1e-05``, ``[a, b]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _is_optional(node: DictConfig, name: str) -> bool:
    """Whether the field ``name`` of ``node`` takes null (it is ``Optional``)."""
    return bool(node._get_node(name)._metadata.optional)


def _ok(value: Any, meta: typing.Mapping[str, Any], names: list[str]) -> bool:
    """Whether one value (not None) satisfies the bounds and choices of ``meta``."""
    if any(k in meta for k in ("gt", "ge", "lt", "le")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if ("gt" in meta and not value > meta["gt"]) or ("ge" in meta and not value >= meta["ge"]):
            return False
        if ("lt" in meta and not value < meta["lt"]) or ("le" in meta and not value <= meta["le"]):
            return False
    if "choices" in meta or "plugin" in meta:
        return value in (*meta.get("choices", ()), *names)
    return True


def field_constraints(cls: type, name: str) -> dict[str, Any]:
    """The constraints of field ``name`` of dataclass ``cls`` (:data:`sllmx.config.CONSTRAINTS` found in its
    metadata).  A subclass that redeclares a field without any (to change its default or help) keeps
    those of the nearest base class that declares the field with some."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and any(k in f.metadata for k in CONSTRAINTS):
            return {k: f.metadata[k] for k in CONSTRAINTS if k in f.metadata}
    return {}


def _plugin_names(kind: str) -> list[str]:
    from sllmx.plugins import registry

    return registry().names(kind)


def config_nodes(cfg: DictConfig, key: str = "") -> Iterator[tuple[str, DictConfig, type]]:
    """Every node of ``cfg`` typed by a dataclass, with its key (``""`` for the top level): ``(key, node,
    dataclass)``, parents before children.  Values are not resolved."""
    if not isinstance(cfg, DictConfig) or cfg._is_none() or cfg._is_missing() or cfg._is_interpolation():
        return
    cls = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(cls):
        yield key, cfg, cls
    for child in cfg.keys():
        node = cfg._get_node(child)
        if isinstance(node, DictConfig):
            yield from config_nodes(node, f"{key}.{child}" if key else str(child))


def check_node(key: str, node: DictConfig, cls: type) -> Optional[str]:
    """The first error of one config node: a field outside its declared range, else the message of the
    dataclass's ``check(key)``; None when the node is valid.

    Raises:
        SllmxError: when a value cannot be resolved (a broken ``${...}`` interpolation) or the dataclass's
            own ``check`` fails (a bug in it, reported with the class's name).
    """
    prefix = f"{key}." if key else ""
    for f in dataclasses.fields(cls):
        meta = field_constraints(cls, f.name)
        if not meta or f.name not in node:
            continue
        try:
            value = node[f.name]
        except OmegaConfBaseException as exc:
            raise SllmxError(f"{prefix}{f.name}: {str(exc).splitlines()[0]}") from exc
        if value is None:  # OmegaConf lets None into Optional fields only
            continue
        names = _plugin_names(meta["plugin"]) if "plugin" in meta else []
        is_list = OmegaConf.is_list(value) or isinstance(value, (list, tuple))
        items = list(value) if is_list else [value]
        if all(_ok(v, meta, names) for v in items):
            continue
        words = allowed(meta, _is_optional(node, f.name), names)
        verb = "use" if words.startswith("one of") else "must be"
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            verb += " finite and"
        each = "each item: " if is_list else ""
        return f"{prefix}{f.name}={_fmt(items if is_list else value)}: {each}{verb} {words}"
    check = getattr(cls, "check", None)
    if callable(check):
        try:
            obj = OmegaConf.to_object(node)
            return obj.check(key)
        except OmegaConfBaseException as exc:
            raise SllmxError(f"{key or 'config'}: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:
            raise SllmxError(f"{key or 'config'}: {cls.__module__}.{cls.__qualname__}.check failed: "
                             f"{type(exc).__name__}: {exc}") from exc
    return None


def validate_config(cfg: DictConfig) -> None:
    """Check every option of the composed config against its declared range, before anything loads.

    Walks the config nodes typed by dataclasses (:func:`config_nodes`), checks each field against the
    ``gt`` / ``ge`` / ``lt`` / ``le`` / ``choices`` / ``plugin`` in its metadata, then calls the
    dataclass's ``check(key)`` method where it has one.  Imports neither torch nor transformers.

    Raises:
        SllmxError: ``<option>=<value>: must be <allowed range>`` for the first bad value, e.g.
            ``method.r=0: must be >= 1``, or the message of a ``check`` method.
    """
    for key, node, cls in config_nodes(cfg):
        message = check_node(key, node, cls)
        if message:
            raise SllmxError(message)


def constraints_by_key(cfg: DictConfig) -> dict[str, str]:
    """``{option: allowed range in words}`` for every option of ``cfg`` that declares one
    (``{"method.r": ">= 1", ...}``), from the dataclasses typing its nodes."""
    out = {}
    for key, node, cls in config_nodes(cfg):
        prefix = f"{key}." if key else ""
        for f in dataclasses.fields(cls):
            meta = field_constraints(cls, f.name)
            if meta and f.name in node:
                names = _plugin_names(meta["plugin"]) if "plugin" in meta else []
                words = allowed(meta, _is_optional(node, f.name), names)
                is_list = OmegaConf.is_list(node._get_node(f.name))
                out[prefix + f.name] = f"each item: {words}" if is_list else words
    return out


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of dataclass ``cls`` (``metadata["help"]``, the nearest class in the
    MRO that gives one), or ``""``."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("help"):
            return str(f.metadata["help"])
    return ""


def help_by_key(cfg: DictConfig) -> dict[str, str]:
    """``{option: help text}`` for every option of ``cfg`` whose dataclass field has one."""
    out = {}
    for key, node, cls in config_nodes(cfg):
        prefix = f"{key}." if key else ""
        for f in dataclasses.fields(cls):
            text = field_help(cls, f.name)
            if text and f.name in node:
                out[prefix + f.name] = text
    return out


def _resolved_note(cfg: DictConfig, path: str, value: Any) -> str:
    """`` (now V)`` for a value computed by one of sllmx's resolvers (``${sllmx_...}``), else ``""``."""
    if not (isinstance(value, str) and value.startswith("${sllmx_")):
        return ""
    try:
        return f" (now {_fmt(OmegaConf.select(cfg, path, throw_on_resolution_failure=True))})"
    except Exception:  # noqa: BLE001 - a help page shows what it can
        return ""


def annotated_yaml(cfg: DictConfig, skip: tuple[str, ...] = ("hydra",), width: int = 100) -> str:
    """``cfg`` as YAML (unresolved, as Hydra's ``--help`` prints it), each option preceded by its help text
    as a comment (wrapped at ``width``) and followed by its allowed values: ``r: 16  # >= 1``; a value
    computed by a resolver also shows what it comes to now.  Top-level keys in ``skip`` are left out."""
    import textwrap

    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    notes = constraints_by_key(cfg)
    helps = help_by_key(cfg)
    lines: list[str] = []

    def emit(node: Any, key: str, indent: str) -> None:
        for k, v in node.items():
            path = f"{key}.{k}" if key else str(k)
            if not key and k in skip:
                continue
            if path in helps:
                lines.extend(textwrap.wrap(helps[path], width=max(40, width - len(indent)),
                                           initial_indent=indent + "# ", subsequent_indent=indent + "# "))
            if isinstance(v, dict) and v:
                lines.append(f"{indent}{k}:")
                emit(v, path, indent + "  ")
                continue
            text = yaml.dump({k: v}, default_flow_style=False, allow_unicode=True, sort_keys=False,
                             Dumper=get_omega_conf_dumper()).rstrip("\n").splitlines()
            note = notes.get(path, "") + _resolved_note(cfg, path, v)
            if note:
                text[0] += f"  # {note.strip()}"
            lines.extend(indent + t for t in text)

    emit(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), "", "")
    return "\n".join(lines)


# The resolvers the config tree uses; registered when this module is imported (sllmx.__main__ and the
# built-in trainers import it), so sllmx.config itself depends on nothing above it.

def default_learning_rate(method: Optional[str], trainer: str, fallback: float) -> float:
    """The ``sllmx_learning_rate`` resolver: ``trainer``'s default learning rate with the method plugin named
    ``method`` (its family and factor; :func:`sllmx.defaults.learning_rate`), ``fallback`` where the trainer has
    no row for the family."""
    from sllmx.defaults import learning_rate

    return learning_rate(method, str(trainer), float(fallback))[0]


OmegaConf.register_new_resolver("sllmx_learning_rate", default_learning_rate, replace=True)


def _help_config(*, _root_: Any) -> str:
    """The ``${sllmx_help_config:}`` resolver of ``hydra.help.template`` (conf/config.yaml): ``python -m sllmx
    --help`` prints the composed config with each option's help text and allowed values
    (:func:`sllmx.validate.annotated_yaml`).
    ``$`` is doubled for the ``string.Template`` Hydra then fills in."""
    return annotated_yaml(_root_).replace("$", "$$")


if not OmegaConf.has_resolver("sllmx_help_config"):
    OmegaConf.register_new_resolver("sllmx_help_config", _help_config)
