"""The plugin system: hookspecs, the registry, entry-point loading and its errors."""

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from sllmx import hookimpl, hookspecs
from sllmx.errors import SllmxError
from sllmx.interfaces import Method
from sllmx.plugins import REGISTRATION_HOOKS, Registry, registry

ROOT = Path(__file__).resolve().parents[1]


def test_every_hookspec_is_documented_and_prefixed():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("sllmx_")]
    assert len(specs) >= 11
    for f in specs:
        assert f.__doc__ and len(f.__doc__.strip()) > 20, f.__name__
    assert set(REGISTRATION_HOOKS) <= {f.__name__ for f in specs}


def test_builtins_come_through_entry_points():
    reg = registry()
    assert set(reg.names("method")) >= {"lora", "qlora", "dora", "prompt_tuning", "full"}
    assert set(reg.names("trainer")) >= {"sft", "dpo", "orpo", "kto"}
    # the core holds no reference to the built-in modules: they were registered by entry-point name
    assert reg.dists["methods"][0] == "sllmx"
    assert reg.entries["method"]["lora"].dist == "sllmx"


def _manager(*plugins):
    pm = pluggy.PluginManager("sllmx")
    pm.add_hookspecs(hookspecs)
    dists = {}
    for i, (dist, plugin) in enumerate(plugins):
        pm.register(plugin, name=f"p{i}")
        dists[f"p{i}"] = (dist, "1.0")
    return pm, dists


class _Plugin:
    def __init__(self, method):
        self.method = method

    @hookimpl
    def sllmx_methods(self):
        return [self.method]


class _Lora(Method):
    name = "lora"


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    pm, dists = _manager(("dist-a", _Plugin(_Lora())), ("dist-b", _Plugin(_Lora())))
    with pytest.raises(SllmxError, match=r"two plugins claim method 'lora': 'dist-.' and 'dist-.'"):
        Registry(pm, dists)


def test_a_plugin_returning_the_wrong_kind_is_named():
    pm, dists = _manager(("dist-a", _Plugin(object())))
    with pytest.raises(SllmxError, match="plugin 'dist-a' returned"):
        Registry(pm, dists)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(SllmxError, match=r"unknown method 'nope'; available: .*lora"):
        registry().get("method", "nope")


def _fake_distribution(tmp_path: Path, dist: str, module: str, source: str) -> dict:
    """A distribution on sys.path by hand: dist-info with an sllmx entry point, and its module."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sllmx]\n{module} = {module}\n")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_broken_plugin_import_error_names_the_distribution(tmp_path):
    env = _fake_distribution(tmp_path, "broken-plugin", "broken_mod", "import does_not_exist\n")
    proc = subprocess.run([sys.executable, "-m", "sllmx.plugins"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "'broken-plugin'" in proc.stderr and "does_not_exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clash_with_a_builtin_stops_the_cli_with_one_message(tmp_path):
    env = _fake_distribution(tmp_path, "clash-plugin", "clash_mod", """
        from sllmx import hookimpl
        from sllmx.interfaces import Method
        class Lora(Method):
            name = "lora"
        @hookimpl
        def sllmx_methods():
            return [Lora()]
    """)
    proc = subprocess.run([sys.executable, "-m", "sllmx", "--cfg", "job"], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "two plugins claim method 'lora'" in proc.stderr and "clash-plugin" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugins_cli_lists_kinds_names_distribution_version():
    proc = subprocess.run([sys.executable, "-m", "sllmx.plugins"], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["kind", "name", "distribution", "version"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    for kind, name in [("method", "qlora"), ("trainer", "kto"), ("model", "tiny"), ("format", "alpaca"),
                       ("data", "support_ko"), ("metric", "json_fields")]:
        assert (kind, name, "sllmx") in rows


def test_a_plugin_with_only_lifecycle_hooks_is_listed_with_its_hooks(tmp_path):
    env = _fake_distribution(tmp_path, "obs-plugin", "obs_mod", """
        from sllmx import hookimpl
        @hookimpl
        def sllmx_after_run(record):
            pass
        @hookimpl
        def sllmx_callbacks(run):
            return []
    """)
    proc = subprocess.run([sys.executable, "-m", "sllmx.plugins"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    row = next(line.split(maxsplit=4) for line in proc.stdout.splitlines() if line.startswith("hooks")
               and "obs_mod" in line)
    assert row == ["hooks", "obs_mod", "obs-plugin", "0.1", "sllmx_after_run, sllmx_callbacks"]


def test_default_learning_rate_is_chosen_by_method_family_and_objective():
    """trainer.learning_rate's default comes from the trainer's table for the method's family (times the method's
    factor); an explicit value, a sweep's included, wins; docs/defaults.md shows the same table."""
    import re

    from sllmx.compose import compose
    from sllmx.defaults import applied
    from sllmx.plugins import registry

    def rate(*overrides):
        return compose(list(overrides)).trainer.learning_rate

    assert rate() == rate("method=dora") == rate("method=qlora") == rate("method=adalora") == 1e-3
    assert rate("method=full") == 1e-4 and rate("method=prompt_tuning") == rate("method=prefix_tuning") == 3e-2
    assert rate("trainer=dpo") == 5e-4 and rate("method=full", "trainer=dpo") == 1e-6
    assert rate("method=ia3") == pytest.approx(3e-3) and rate("method=vera", "trainer=kto") == pytest.approx(1e-4)
    assert rate("trainer.learning_rate=3e-4") == 3e-4 and rate("method=full", "trainer.learning_rate=3e-4") == 3e-4

    used = applied(compose(["method=full", "trainer=orpo"]))["trainer.learning_rate"]
    assert used["value"] == 5e-6 and used["source"].startswith("orpo × full: Mistral-ORPO")
    assert applied(compose(["trainer.learning_rate=3e-4"])) == {}

    reg = registry()
    doc = (ROOT / "docs" / "defaults.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\w+) \| ([^|]+\|[^|]+\|[^|]+)\|$", doc, flags=re.M))
    for name in ("sft", "cpt", "dpo", "orpo", "kto", "cpo", "simpo", "grpo"):
        table = reg.get("trainer", name).learning_rates
        shown = [float(x) for x in rows[name].split("|")]
        assert shown == [table[f][0] for f in ("adapter", "prompt", "full")], name


def test_a_failing_logger_or_observer_is_one_warning_line_naming_the_plugin(capsys):
    """Loggers and observer hooks cannot break a run: their exceptions become one stderr line each."""
    from types import SimpleNamespace

    from sllmx.interfaces import Logger
    from sllmx.loggers import finish_logger, log_metrics, start_logger
    from sllmx.plugins import Registry, registry

    calls = []

    class Flaky(Logger):
        name = "flaky"

        def start(self, run, cfg):
            calls.append("start")

        def log(self, metrics, step):
            calls.append(("log", step, metrics))
            raise OSError("disk\nfull")

        def finish(self, record):
            calls.append(("finish", record))
            raise RuntimeError("no network")

    reg = registry()
    fake = SimpleNamespace(get=lambda kind, name: Flaky(), dist_of=lambda kind, name: "flaky-dist")
    logger = start_logger(SimpleNamespace(cfg=SimpleNamespace(logger=SimpleNamespace(name="flaky")), registry=fake))
    log_metrics(logger, {"loss": 1.5, "note": "text", "flag": True}, 2)
    log_metrics(logger, {"loss": 1.0}, 4)  # after a failure the logger gets no more metrics
    finish_logger(logger, "record")
    assert calls == ["start", ("log", 2, {"loss": 1.5}), ("finish", "record")]
    err = capsys.readouterr().err.splitlines()
    assert err == ["sllmx: warning: plugin flaky-dist: Logger.log (flaky) raised OSError: disk full",
                   "sllmx: warning: plugin flaky-dist: Logger.finish (flaky) raised RuntimeError: no network"]

    class Observer:
        @hookimpl
        def sllmx_after_run(self, record):
            raise ValueError("bad " + record)

    seen = []

    class Other:
        @hookimpl
        def sllmx_after_run(self, record):
            seen.append(record)

    plugins = [Observer(), Other()]
    for plugin in plugins:
        reg.pm.register(plugin, name=type(plugin).__name__.lower())
    try:
        Registry.observe(reg, "sllmx_after_run", record="x")
    finally:
        for plugin in plugins:
            reg.pm.unregister(plugin)
    assert seen == ["x"]  # the other plugins are still called
    assert capsys.readouterr().err == "sllmx: warning: plugin observer: sllmx_after_run raised ValueError: bad x\n"
