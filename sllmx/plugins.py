"""Plugin loading (pluggy, entry-point group ``sllmx``) and the registry of named extensions.

``python -m sllmx.plugins`` lists every loaded plugin: its names, kinds,
distribution and version.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from sllmx import hookspecs
from sllmx.errors import SllmxError

PROJECT = "sllmx"

#: registration hook → kind (the ConfigStore group where the kind has a config).
REGISTRATION_HOOKS = {
    "sllmx_methods": "method",
    "sllmx_trainers": "trainer",
    "sllmx_model_sources": "model",
    "sllmx_data_sources": "data",
    "sllmx_data_formats": "format",
    "sllmx_metrics": "metric",
    "sllmx_rewards": "reward",
    "sllmx_loggers": "logger",
}
#: the kinds whose config dataclass is stored in the ConfigStore group of the same name
CONFIG_KINDS = ("method", "trainer", "model", "data", "logger")


@dataclass(frozen=True)
class Entry:
    """One named extension with where it came from."""

    kind: str
    name: str
    obj: Any
    dist: str
    version: str


class Registry:
    """Every named extension, by kind and name, built from one plugin manager.

    Raises:
        SllmxError: when two plugins claim the same name within a kind, or a plugin
            returns something that is not a :class:`~sllmx.interfaces.Plugin`.
    """

    def __init__(self, pm: pluggy.PluginManager, dists: dict[str, tuple[str, str]]):
        self.pm = pm
        self.dists = dists
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in REGISTRATION_HOOKS.values()}
        for hook_name, kind in REGISTRATION_HOOKS.items():
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                dist, version = dists.get(impl.plugin_name, (impl.plugin_name, ""))
                try:
                    objs = impl.function() or []
                except Exception as exc:  # a plugin's own bug, reported with its name
                    raise SllmxError(f"plugin {dist!r} ({impl.plugin_name}) failed in {hook_name}(): "
                                     f"{type(exc).__name__}: {exc}") from exc
                for obj in objs:
                    name = getattr(obj, "name", None)
                    if not name or getattr(obj, "kind", None) != kind:
                        raise SllmxError(f"plugin {dist!r} returned {obj!r} from {hook_name}(); "
                                         f"expected a sllmx.interfaces object of kind {kind!r} with a name")
                    if name in self.entries[kind]:
                        other = self.entries[kind][name]
                        raise SllmxError(f"two plugins claim {kind} {name!r}: {other.dist!r} and {dist!r}; "
                                         f"uninstall one of them")
                    self.entries[kind][name] = Entry(kind, name, obj, dist, version)

    def get(self, kind: str, name: str) -> Any:
        """Return the extension ``name`` of ``kind``.

        Raises:
            SllmxError: naming the unknown option and listing those available.
        """
        try:
            return self.entries[kind][name].obj
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            raise SllmxError(f"unknown {kind} {name!r}; available: {known}") from None

    def dist_of(self, kind: str, name: str) -> str:
        """The distribution that provides extension ``name`` of ``kind`` (for messages)."""
        entry = self.entries.get(kind, {}).get(name)
        return entry.dist if entry is not None else name

    def observe(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of the observer ``hook`` (``sllmx_before_train``, ``sllmx_after_evaluate``,
        ``sllmx_after_run``) with ``kwargs``.  An exception in one is reported by :func:`warn` (naming the
        plugin's distribution and the hook) and the others are still called; the run goes on unchanged.
        ``KeyboardInterrupt`` and ``SystemExit`` pass through."""
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's order: the last registered first
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:
                warn(self.dists.get(impl.plugin_name, (impl.plugin_name, ""))[0], hook, exc)

    def names(self, kind: str) -> list[str]:
        """Sorted names of every extension of ``kind`` (``method``, ``trainer``, ``model``, ...)."""
        return sorted(self.entries[kind])


def _load_entry_points(pm: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    """Like ``pm.load_setuptools_entrypoints(PROJECT)``, but an error names the distribution.

    Returns ``{plugin name: (distribution, version)}``.
    """
    dists = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != PROJECT or pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            dist_name = dist.metadata["name"]
            try:
                plugin = ep.load()
            except Exception as exc:
                raise SllmxError(f"plugin {ep.name!r} from distribution {dist_name!r} {dist.version} "
                                 f"could not be imported ({ep.value}): {type(exc).__name__}: {exc}") from exc
            if pm.is_registered(plugin):  # the same module under two entry-point names
                continue
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise SllmxError(f"plugin {ep.name!r} from distribution {dist_name!r}: {exc}") from exc
            dists[ep.name] = (dist_name, dist.version)
    return dists


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry: entry points loaded once, then cached."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return Registry(pm, _load_entry_points(pm))


#: the field of a config node that names its plugin, per kind
PLUGIN_FIELD = {"model": "source", "data": "source", "method": "name", "trainer": "name", "logger": "name"}


def typed(node: Any, kind: str, reg: "Registry | None" = None) -> Any:
    """What a plugin receives as its config: the node of ``kind`` (``model``, ``data``, ``method``,
    ``trainer``) as an instance of the plugin's own config dataclass (``OmegaConf.to_object``: values
    resolved, dicts and lists plain).

    Args:
        node: a composed node (typed by the plugin's dataclass through the ConfigStore), or a plain mapping
            such as a run.json ``config`` section, which is first merged onto the dataclass of the plugin it
            names (``model.source``, ``method.name``, ...).  A dataclass instance is returned as it is.
        kind: the plugin kind, which is also the node's key in the config (for messages).
        reg: the registry to find the plugin in (default: :func:`registry`).

    Raises:
        SllmxError: a field without a default was not given (``model.name_or_path is required``), a key or
            value the dataclass does not take, or an unknown plugin.
    """
    import dataclasses

    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if not isinstance(node, (DictConfig, dict)):
        return node
    try:
        if not dataclasses.is_dataclass(OmegaConf.get_type(node) if isinstance(node, DictConfig) else None):
            name = node.get(PLUGIN_FIELD[kind])
            plugin = (reg or registry()).get(kind, str(name))
            if plugin.config is None:
                raise SllmxError(f"{kind}={name}: the plugin declares no config dataclass")
            node = OmegaConf.merge(OmegaConf.structured(plugin.config), node)
        return OmegaConf.to_object(node)
    except MissingMandatoryValue as exc:
        field = str(getattr(exc, "full_key", "") or getattr(exc, "key", "") or "a field")
        field = field if field.startswith(f"{kind}.") else f"{kind}.{field}"
        raise SllmxError(f"{field} is required: set it on the command line, e.g. {field}=...") from exc
    except OmegaConfBaseException as exc:
        raise SllmxError(f"{kind}: {str(exc).splitlines()[0]}") from exc


def register_configs(reg: Registry) -> None:
    """Store every plugin's config dataclass in Hydra's ConfigStore under its kind's group."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for kind in CONFIG_KINDS:
        for entry in reg.entries[kind].values():
            if entry.obj.config is not None:
                cs.store(group=kind, name=entry.name, node=entry.obj.config, provider=entry.dist)


def warn(plugin: str, hook: str, exc: BaseException) -> None:
    """Report a plugin's failure that must not stop the run: one line on stderr,
    ``sllmx: warning: plugin <plugin>: <hook> raised <Type>: <message>``."""
    message = " ".join(str(exc).split())
    sys.stderr.write(f"sllmx: warning: plugin {plugin}: {hook} raised {type(exc).__name__}: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Print a table of every plugin: kind, name, distribution, version, help."""
    try:
        reg = registry()
    except SllmxError as exc:
        print(f"sllmx: error: {exc}", file=sys.stderr)
        return 2
    rows = [(e.kind, e.name, e.dist, e.version, e.obj.help)
            for kind in reg.entries.values() for e in kind.values()]
    # plugins that only observe or add callbacks: listed by entry-point name with the hooks they implement
    for name, plugin in reg.pm.list_name_plugin():
        hooks = sorted(h.name for h in reg.pm.get_hookcallers(plugin) or [] if h.name not in REGISTRATION_HOOKS)
        if hooks and name in reg.dists:
            rows.append(("hooks", name, *reg.dists[name], ", ".join(hooks)))
    header = ("kind", "name", "distribution", "version", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*header))
    for row in rows:
        print(fmt.format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
