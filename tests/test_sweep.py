"""The Optuna sweeper (hydra/sweeper=sllmx_optuna): grammar, sampler and pruner config groups, and sweeps on
model=tiny."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from common import ROOT
from sllmx.errors import RunStopped, SllmxError
from sllmx.study import PRUNER_ATTR, make_storage, mask_url, pruner_from_spec
from sllmx.sweep.space import format_value, parse_search_space
from sllmx.sweep.study import Samplers, counts_toward_budget, default_study_name

#: a sweep of tiny runs: 12 steps, a dev evaluation every 3 (4 reports per trial), no early stopping
TINY = ["hydra/sweeper=sllmx_optuna", "model=tiny", "logger=none", "data=support_ko", "data.n_train=24",
        "data.n_dev=6", "data.n_test=6", "trainer.max_steps=12", "trainer.per_device_train_batch_size=4",
        "trainer.per_device_eval_batch_size=6", "trainer.logging_steps=3", "eval.eval_steps=3",
        "eval.max_new_tokens=8", "eval.early_stopping_patience=null", "save_model=false", "trainer.precision=fp32"]


def sllmx_multirun(tmp_path, *overrides, env=None, timeout=900):
    """``python -m sllmx --multirun`` in ``tmp_path`` (so multirun/ lands there)."""
    cmd = [sys.executable, "-m", "sllmx", "--multirun", *TINY, f"cache_dir={tmp_path.parent / 'cache'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sweep_json(tmp_path) -> dict:
    (path,) = tmp_path.glob("multirun/*/sweep.json")
    return json.loads(path.read_text())


def run_json(trial: dict) -> dict:
    return json.loads((Path(trial["run_dir"]) / "run.json").read_text())


# -- the override grammar -------------------------------------------------------------------------------

def test_grammar_maps_hydra_sweeps_to_optuna_distributions():
    space, fixed = parse_search_space(
        ["trainer.learning_rate=tag(log, interval(1e-5, 1e-3))", "method.r=choice(4, 8, 16, 32)", "model=tiny",
         "trainer.num_train_epochs=range(1, 4)", "trainer.beta=interval(0.01, 0.5)", "seed=1,2",
         "+x=tag(log, int(interval(1, 64)))", "trainer.weight_decay=range(0.0, 0.3, 0.1)", "method=lora,dora"],
        {})
    dists = {p.name: p.distribution for p in space}
    assert dists == {
        "trainer.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
        "method.r": CategoricalDistribution([4, 8, 16, 32]),
        "trainer.num_train_epochs": IntDistribution(1, 3),
        "trainer.beta": FloatDistribution(0.01, 0.5),
        "seed": CategoricalDistribution([1, 2]),
        "x": IntDistribution(1, 64, log=True),
        "trainer.weight_decay": FloatDistribution(0.0, 0.2, step=0.1),
        "method": CategoricalDistribution(["lora", "dora"]),
    }
    assert fixed == ["model=tiny"]
    by_name = {p.name: p for p in space}
    assert by_name["x"].override(7) == "+x=7"  # the prefix survives into the job's override
    assert by_name["trainer.num_train_epochs"].grid == [1, 2, 3]
    assert by_name["trainer.weight_decay"].grid == [0.0, 0.1, 0.2]


def test_command_line_sweeps_replace_the_sweep_files_params():
    space, _ = parse_search_space(["method.r=choice(8)"], {"method.r": "choice(4, 64)",
                                                            "trainer.learning_rate": "interval(1e-5, 1e-4)"})
    assert {p.name: p.distribution for p in space} == {
        "trainer.learning_rate": FloatDistribution(1e-5, 1e-4), "method.r": CategoricalDistribution([8])}


@pytest.mark.parametrize("override, message", [
    ("a=tag(log, choice(1, 2))", "tag(log"),
    ("a=tag(log, interval(0, 1))", "positive lower bound"),
    ("a=interval(2, 1)", "empty"),
    ("a=range(5, 1)", "empty"),
    ("a=tag(log, range(1, 10, 2))", "step 1"),
    ("a=choice([1, 2], [3])", "numbers, strings"),
    ("a=choice(1, 2", "cannot parse"),
])
def test_grammar_errors_name_the_parameter(override, message):
    with pytest.raises(SllmxError, match=re.escape(message)):
        parse_search_space([override], {})


@pytest.mark.parametrize("value", ["lora", "a b", "it's", 1e-05, 3, True, None, "x/y.z", "c,d"])
def test_values_written_back_as_overrides_parse_to_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"k={format_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


# -- samplers, pruners, names ---------------------------------------------------------------------------

def sweeper_node(*overrides):
    """``hydra.sweeper`` as Hydra composes it for ``hydra/sweeper=sllmx_optuna`` and ``overrides``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sllmx.compose import setup as _setup

    _setup()
    with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=sllmx_optuna", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)


def _space():
    return parse_search_space(["a=tag(log, interval(1e-5, 1e-3))", "b=choice(4, 8)"], {})[0]


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsgaii": optuna.samplers.NSGAIISampler,
            "qmc": optuna.samplers.QMCSampler, "gp": optuna.samplers.GPSampler, "grid": optuna.samplers.GridSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "nop": optuna.pruners.NopPruner}


def test_the_defaults_are_tpe_seeded_0_and_successive_halving_from_the_first_evaluation():
    node = sweeper_node()
    assert node["sampler"] == {**node["sampler"], "_target_": "optuna.samplers.TPESampler", "seed": 0}
    assert node["pruner"]["_target_"] == "optuna.pruners.SuccessiveHalvingPruner"
    assert node["pruner"]["min_resource"] == 20 and node["pruner"]["reduction_factor"] == 4  # eval.eval_steps
    assert sweeper_node("eval.eval_steps=3")["pruner"]["min_resource"] == 3
    assert sweeper_node("hydra/sweeper/pruner=hyperband", "eval.eval_steps=5")["pruner"]["min_resource"] == 5


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_node_instantiates_its_optuna_sampler_with_its_seed(name):
    node = sweeper_node(f"hydra/sweeper/sampler={name}", "hydra.sweeper.sampler.seed=3")["sampler"]
    space = _space() if name != "grid" else parse_search_space(["a=choice(1, 2)", "b=range(0, 3)"], {})[0]
    samplers = Samplers(node, space)
    samplers.check()
    assert samplers.seed == 3 and samplers.grid == (name == "grid")
    sampler = samplers.for_trial(5)
    assert type(sampler) is SAMPLERS[name]
    if name == "random":  # seeded seed + trial number: the same draws as Optuna's own sampler with seed 8
        study = optuna.create_study(sampler=sampler)
        other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=8))
        assert study.ask({"a": _space()[0].distribution}).params == other.ask({"a": _space()[0].distribution}).params


def test_sampler_arguments_are_optunas_own():
    node = sweeper_node("hydra.sweeper.sampler.n_startup_trials=5", "hydra.sweeper.sampler.multivariate=true")
    sampler = Samplers(node["sampler"], _space()).build(0)
    assert sampler._n_startup_trials == 5 and sampler._multivariate


def test_grid_sampler_walks_every_combination_once():
    space, _ = parse_search_space(["a=choice(1, 2)", "b=range(0, 3)"], {})
    samplers = Samplers(sweeper_node("hydra/sweeper/sampler=grid")["sampler"], space)
    samplers.check()
    assert samplers.grid_size() == 6
    study = optuna.create_study(sampler=samplers.for_trial(0))
    seen = []
    for _ in range(6):  # ask and tell (the grid's own after_trial would call study.stop() and fail here)
        trial = study.ask({p.name: p.distribution for p in space})
        seen.append((trial.params["a"], trial.params["b"]))
        study.tell(trial, 0.0)
    assert sorted(seen) == [(a, b) for a in (1, 2) for b in (0, 1, 2)]


@pytest.mark.parametrize("group", ["sampler", "pruner"])
def test_an_unknown_name_or_argument_is_hydras_error(group):
    from hydra.errors import ConfigCompositionException, MissingConfigException

    with pytest.raises(MissingConfigException, match=f"Could not find 'hydra/sweeper/{group}/nope'"):
        sweeper_node(f"hydra/sweeper/{group}=nope")
    with pytest.raises(ConfigCompositionException, match="no_such_arg"):
        sweeper_node(f"hydra.sweeper.{group}.no_such_arg=1")


def test_removed_options_are_hydras_unknown_keys():
    from hydra.errors import ConfigCompositionException

    for old in ("hydra.sweeper.evaluate_best_on_test=true", "hydra.sweeper.seed=1"):
        with pytest.raises(ConfigCompositionException):
            sweeper_node(old)


def test_samplers_that_cannot_sample_the_space_are_refused():
    with pytest.raises(SllmxError, match="interval"):
        Samplers(sweeper_node("hydra/sweeper/sampler=grid")["sampler"], _space()).check()
    with pytest.raises(SllmxError, match="cmaes"):
        Samplers(sweeper_node("hydra/sweeper/sampler=cmaes")["sampler"],
                 parse_search_space(["b=choice(4, 8)"], {})[0]).check()
    with pytest.raises(SllmxError, match="hydra/sweeper/sampler"):  # a value Optuna refuses
        Samplers({"_target_": "optuna.samplers.NSGAIISampler", "seed": 0, "population_size": 1}, _space()).build(0)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_node_instantiates_its_optuna_pruner(name):
    assert type(pruner_from_spec(sweeper_node(f"hydra/sweeper/pruner={name}")["pruner"])) is PRUNERS[name]


def test_pruner_arguments_are_optunas_and_bad_ones_are_refused():
    node = sweeper_node("hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.min_resource=2")["pruner"]
    assert pruner_from_spec(node)._min_resource == 2
    assert pruner_from_spec(sweeper_node("hydra/sweeper/pruner=percentile")["pruner"])._percentile == 25.0
    assert type(pruner_from_spec(None)) is optuna.pruners.NopPruner
    with pytest.raises(SllmxError, match="hydra/sweeper/pruner"):
        pruner_from_spec({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": -1})
    with pytest.raises(SllmxError, match="other than optuna.pruners classes"):
        pruner_from_spec({"_target_": "os.system", "command": "true"})
    # a nested node is instantiated too: it must be an Optuna pruner as well
    with pytest.raises(SllmxError, match="other than optuna.pruners classes"):
        pruner_from_spec({"_target_": "optuna.pruners.PatientPruner", "patience": 1,
                          "wrapped_pruner": {"_target_": "builtins.print", "_args_": ["nested target called"]}})
    wrapped = pruner_from_spec({"_target_": "optuna.pruners.PatientPruner", "patience": 1,
                                "wrapped_pruner": {"_target_": "optuna.pruners.MedianPruner"}})
    assert type(wrapped._wrapped_pruner) is optuna.pruners.MedianPruner


def test_a_job_in_another_process_rebuilds_the_studys_pruner(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = sweeper_node("hydra/sweeper/pruner=successive_halving", "hydra.sweeper.pruner.reduction_factor=3")["pruner"]
    study = optuna.create_study(study_name="s", storage=storage, pruner=pruner_from_spec(spec))
    study.set_user_attr(PRUNER_ATTR, spec)
    code = ("import optuna, sys; from sllmx.study import PRUNER_ATTR, pruner_from_spec; "
            "s = optuna.load_study(study_name='s', storage=sys.argv[1]); p = pruner_from_spec(s.user_attrs[PRUNER_ATTR]); "
            "print(type(p).__name__, p._reduction_factor)")
    proc = subprocess.run([sys.executable, "-c", code, storage], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["SuccessiveHalvingPruner", "3"], proc.stderr[-2000:]


def test_default_study_name_follows_the_search_space_not_the_budget():
    space, fixed = parse_search_space(["model=tiny", "a=choice(1, 2)"], {})
    other, _ = parse_search_space(["a=choice(1, 3)"], {})
    name = default_study_name("lora-sft", fixed, space, {"sampler": "tpe"})
    assert name.startswith("lora-sft-") and len(name) == len("lora-sft-") + 8
    assert name == default_study_name("lora-sft", list(reversed(fixed)), space, {"sampler": "tpe"})
    assert name != default_study_name("lora-sft", fixed, other, {"sampler": "tpe"})
    assert name != default_study_name("lora-sft", fixed, space, {"sampler": "random"})


def test_storage_urls_are_checked_and_passwords_hidden(tmp_path):
    with pytest.raises(SllmxError, match="not a database URL"):
        make_storage(str(tmp_path / "optuna.db"))
    with pytest.raises(SllmxError, match="cannot open"):
        make_storage("nosuchdialect://x/y")
    assert mask_url("postgresql://me:secret@db:5432/s") == "postgresql://me:***@db:5432/s"


def test_budget_counts_finished_trials_but_not_killed_ones():
    study = optuna.create_study()
    for state, attrs in [("COMPLETE", {}), ("PRUNED", {}), ("FAIL", {"sllmx_error": "boom"}), ("FAIL", {})]:
        trial = study.ask()
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, 1.0 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    assert [counts_toward_budget(t) for t in study.trials] == [True, True, True, False]


# -- Hydra's Optuna sweeper's configs (plugins/hydra_optuna_sweeper) -------------------------------------

PEER = ROOT / "docs" / "examples" / "hydra_optuna_sweeper.yaml"


@pytest.mark.parametrize("override, expected", [  # the cases of its tests/test_optuna_sweeper_plugin.py, its example's
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", CategoricalDistribution([1, 2])),
    ("key=range(1,3)", IntDistribution(1, 2)),  # the peer: IntDistribution(1, 3); sllmx: Hydra's grammar (1, 2)
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1)),  # the peer: high 5.5
    ("key=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.0, step=0.5)),  # its example's x
    ("key=choice(-5 ,0 ,5)", CategoricalDistribution([-5, 0, 5])),  # its example's y
])
def test_the_peers_grammar_cases(override, expected):
    (param,), fixed = parse_search_space([override], {})
    assert param.distribution == expected and fixed == []


def test_the_peers_plain_values_and_deletions_are_fixed_overrides():
    space, fixed = parse_search_space(["key1=choice(1,2)", "key2=5", "~z", "~z=10"], {})
    assert [p.name for p in space] == ["key1"] and fixed == ["key2=5", "~z", "~z=10"]


def peer_config():
    """The peer's example config with sllmx's keys (docs/examples), composed as ``--config-dir`` does."""
    from hydra import compose, initialize_config_dir

    from sllmx.compose import setup as _setup

    _setup()
    with initialize_config_dir(config_dir=str(PEER.parent), version_base="1.3"):
        return compose(PEER.stem, overrides=["hydra.searchpath=[pkg://sllmx.conf]"], return_hydra_config=True)


def test_the_peers_example_config_composes_and_builds_its_search_space():
    from omegaconf import OmegaConf

    from sllmx.sweep.sweeper import custom_space

    doc = (ROOT / "docs" / "sweeps.md").read_text()
    shown = doc.split("## Coming from hydra-optuna-sweeper")[1].split("```yaml\n")[1].split("```")[0]
    assert OmegaConf.create(shown) == OmegaConf.load(PEER)  # the documented config is the tested one
    cfg = peer_config()
    node = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert node["_target_"].endswith("SllmxOptunaSweeper") and node["sampler"]["seed"] == 123
    assert {k: node[k] for k in ("direction", "study_name", "storage", "n_trials", "n_jobs", "max_failure_rate")} == {
        "direction": "minimize", "study_name": "sphere", "storage": None, "n_trials": 20, "n_jobs": 1,
        "max_failure_rate": 0.0}
    space, fixed = parse_search_space([], node["params"])
    assert {p.name: p.distribution for p in space} == {
        "method.lora_dropout": FloatDistribution(0.0, 0.25, step=0.05), "method.r": CategoricalDistribution([4, 8, 16])}
    samplers = Samplers(node["sampler"], space)
    samplers.check()
    extend = custom_space(node["custom_search_space"], cfg, fixed)
    study = optuna.create_study(sampler=samplers.for_trial(0))
    for _ in range(4):
        trial = study.ask({p.name: p.distribution for p in space})
        extend(trial)
        r = trial.params["method.r"]
        assert trial.params["method.lora_alpha"] in (r, 2 * r, 3 * r, 4 * r)
        study.tell(trial, 1.0)


def bad_space(config, trial):
    trial.suggest_int("model", 1, 2)


def test_custom_search_space_errors_are_one_line():
    from sllmx.sweep.sweeper import custom_space

    with pytest.raises(SllmxError, match="custom_search_space=nosuchmodule.f"):
        custom_space("nosuchmodule.f", None, [])
    extend = custom_space(f"{__name__}.bad_space", None, ["model=tiny"])
    with pytest.raises(SllmxError, match="suggested model, which an override fixes"):
        extend(optuna.create_study().ask())


def test_peer_keys_compose_and_an_unknown_key_is_hydras_message():
    from hydra.errors import ConfigCompositionException

    from hydra_plugins.sllmx_optuna_sweeper.sllmx_optuna_sweeper import SllmxOptunaSweeper

    assert sweeper_node()["max_failure_rate"] == 1.0 and sweeper_node()["custom_search_space"] is None
    node = sweeper_node("hydra.sweeper.max_failure_rate=0.5", "hydra.sweeper.custom_search_space=m.f")
    assert node["max_failure_rate"] == 0.5 and node["custom_search_space"] == "m.f"
    with pytest.raises(ConfigCompositionException, match="Could not append"):  # Hydra's hint, now that the key exists
        sweeper_node("+hydra.sweeper.max_failure_rate=0.5")
    sweeper = SllmxOptunaSweeper(**{**node, "foo": 1})
    with pytest.raises(ConfigCompositionException, match="Key 'foo' not in 'SllmxOptunaSweeperConf'"):
        sweeper.check_keys()


@pytest.mark.parametrize("rate, states, stops", [
    (1.0, ["FAIL", "FAIL"], False), (0.5, ["FAIL", "COMPLETE"], False), (0.5, ["FAIL", "FAIL"], True),
    (0.0, ["COMPLETE", "PRUNED"], False), (0.0, ["COMPLETE", "FAIL"], True)])
def test_max_failure_rate_is_the_peers_share_of_a_batch(rate, states, stops):
    from sllmx.sweep.loop import Outcome, check_failures

    outcomes = [(n, Outcome(state, error="boom" if state == "FAIL" else None)) for n, state in enumerate(states)]
    if stops:
        with pytest.raises(SllmxError, match=rf"max_failure_rate={rate} allows .trial \d: boom"):
            check_failures(outcomes, rate)
    else:
        check_failures(outcomes, rate)


def test_optimization_results_yaml_is_the_peers(tmp_path):
    from omegaconf import OmegaConf

    from sllmx.sweep.results import PEER_FILE, SweepResults

    space, fixed = parse_search_space(["+x=choice(1, 2)", "model=tiny"], {})
    study = optuna.create_study()
    for value in (0.5, 0.25):
        trial = study.ask({"x": space[0].distribution})
        study.tell(trial, value)
    results = SweepResults("s", "sqlite:///x", "minimize", "eval_loss", {}, {}, 2, space, fixed, tmp_path)
    results.write(study)
    doc = OmegaConf.to_container(OmegaConf.load(tmp_path / PEER_FILE))
    assert doc == {"name": "optuna", "best_params": {"+x": study.best_trial.params["x"]}, "best_value": 0.25}


def test_the_rerun_command_names_the_config_dir_and_name():
    from omegaconf import OmegaConf

    from sllmx.sweep.sweeper import rerun_command

    sources = [{"provider": "hydra", "path": "pkg://hydra.conf"}, {"provider": "main", "path": "pkg://sllmx.conf"}]
    cfg = OmegaConf.create({"hydra": {"runtime": {"config_sources": sources}, "job": {"config_name": "config"}}})
    assert rerun_command(cfg) == "python -m sllmx"
    cfg.hydra.runtime.config_sources.append({"provider": "command-line", "path": "file:///my conf"})
    cfg.hydra.job.config_name = "peer"
    assert rerun_command(cfg) == "python -m sllmx --config-dir='/my conf' --config-name=peer"


# -- resume: a killed worker's trial ----------------------------------------------------------------------

def test_a_trial_of_a_gone_worker_on_this_host_is_failed_and_requeued_at_once(tmp_path):
    import socket
    import warnings

    from sllmx.sweep.loop import HEARTBEAT_WARNING, AskTellLoop
    from sllmx.sweep.workers import WORKER_ATTR, fail_trials_of_gone_workers, this_worker

    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", 60, 2)
    study = optuna.create_study(study_name="s", storage=storage)
    space = parse_search_space(["a=choice(1, 2)"], {})[0]
    loop = AskTellLoop(study, space, Samplers({"_target_": "optuna.samplers.RandomSampler", "seed": 0}, space),
                       None, ("", "s"), 4, 1, 60, None, None, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trials = [loop.ask() for _ in range(4)]  # RUNNING, each with its worker: this process
    assert not [w for w in caught if HEARTBEAT_WARNING in str(w.message)]
    assert trials[0].user_attrs[WORKER_ATTR] == this_worker(0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for trial, worker in zip(trials[1:], [
            {**this_worker(1), "pid": dead.pid},  # gone
            {**this_worker(2), "pid": dead.pid, "host": socket.gethostname() + "-other"},  # another host: heartbeat
            {**this_worker(1), "pid": dead.pid}]):  # written for another trial (inherited by a retry): not trusted
        trial.set_user_attr(WORKER_ATTR, worker)
    assert fail_trials_of_gone_workers(study) == [1]
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "RUNNING", 1: "FAIL", 2: "RUNNING", 3: "RUNNING", 4: "WAITING"}
    retry = study.trials[4]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == study.trials[1].params
    assert fail_trials_of_gone_workers(study) == []


# -- ready sweeps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_ready_sweeps_compose_and_parse(path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sllmx.compose import setup as _setup

    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# python -m sllmx --multirun sweep={path.stem}")
    _setup()
    with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={path.stem}"], return_hydra_config=True)
    if path.stem == "compare":  # not a search: the best configurations of finished sweeps on new seeds
        assert cfg.hydra.sweeper._target_.endswith("SllmxCompareSweeper") and list(cfg.hydra.sweeper.seeds) == [1, 2, 3]
        return
    assert cfg.hydra.sweeper._target_.endswith("SllmxOptunaSweeper")
    space, _ = parse_search_space([], dict(cfg.hydra.sweeper.params))
    assert space
    Samplers(OmegaConf.to_container(cfg.hydra.sweeper.sampler, resolve=True), space).check()
    pruner_from_spec(OmegaConf.to_container(cfg.hydra.sweeper.pruner, resolve=True))


def test_ready_sweep_ranges_follow_common_practice():
    from omegaconf import OmegaConf

    params = {p.stem: OmegaConf.load(p).hydra.sweeper.params for p in (ROOT / "sweeps").glob("*.yaml")
              if p.stem != "compare"}
    assert params["sft_lora"]["trainer.learning_rate"] == "tag(log, interval(1e-5, 2e-3))"
    assert params["sft_lora"]["method.r"] == "choice(4, 8, 16, 32, 64)"
    assert params["qlora"]["trainer.num_train_epochs"] == "choice(1, 2, 3)"
    assert params["dpo"]["trainer.learning_rate"] == "tag(log, interval(5e-5, 2e-3))"
    assert params["dpo"]["trainer.beta"] == "tag(log, interval(0.01, 0.5))"
    assert params["methods"]["method"] == "choice(lora, dora, qlora, prompt_tuning, full)"


# -- sweeps on model=tiny -------------------------------------------------------------------------------

def test_bad_sweeper_options_are_one_line_errors(tmp_path):
    proc = sllmx_multirun(tmp_path, "hydra/sweeper/sampler=nope", "trainer.learning_rate=interval(1e-5, 1e-3)")
    assert proc.returncode == 1 and "Could not find 'hydra/sweeper/sampler/nope'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "sllmx: error" not in proc.stderr
    for args, message in [(["hydra/sweeper/sampler=grid", "trainer.learning_rate=interval(1e-5, 1e-3)"], "interval()"),
                          ([], "nothing to sweep")]:
        proc = sllmx_multirun(tmp_path, *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("sllmx: error: ") and message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_median_pruning_sweep_records_complete_and_pruned_trials(tmp_path):
    proc = sllmx_multirun(tmp_path, "trainer.learning_rate=tag(log, interval(1e-5, 3e-2))", "method.r=choice(4, 16)",
                          "hydra.sweeper.n_trials=8", "hydra/sweeper/pruner=median",
                          "hydra.sweeper.pruner.n_startup_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert doc["direction"] == "minimize" and doc["metric"] == "eval_loss"
    assert doc["pruner"]["_target_"] == "optuna.pruners.MedianPruner" and doc["pruner"]["n_startup_trials"] == 2
    states = [t["state"] for t in doc["trials"]]
    assert len(states) == 8 and "COMPLETE" in states and "PRUNED" in states, states
    assert doc["counts"]["COMPLETE"] + doc["counts"]["PRUNED"] == 8
    for trial in doc["trials"]:
        record = run_json(trial)
        assert record["status"] == trial["state"]
        assert record["trial"]["number"] == trial["number"] and record["trial"]["study_name"] == doc["study_name"]
        assert record["global_steps"] == trial["global_steps"]
        assert record["config"]["trainer"]["learning_rate"] == pytest.approx(trial["params"]["trainer.learning_rate"])
        reported = [h["value"] for h in record["dev_metric"]["history"][1:]]  # the baseline is not reported
        assert list(trial["intermediate_values"].values()) == pytest.approx(reported)
        if trial["state"] == "PRUNED":
            assert record["global_steps"] < 12 and "pruned at step" in record["pruned"]
            assert trial["last_value"] == pytest.approx(record["dev_metric"]["final"])
    best = doc["best_trial"]
    assert best["value"] == min(t["value"] for t in doc["trials"] if t["state"] == "COMPLETE")
    assert f"best trial {best['number']}: eval_loss=" in proc.stdout
    assert doc["total_train_steps"] < 8 * 12


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    # a learning rate of 1e30 turns the weights and the loss into inf/NaN; the other trial completes
    proc = sllmx_multirun(tmp_path, "trainer.learning_rate=choice(1e-3, 1e30)", "hydra/sweeper/sampler=grid",
                          "hydra/sweeper/pruner=nop", "hydra.sweeper.n_trials=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert doc["n_trials"] == 2  # lowered to the grid's size
    by_lr = {t["params"]["trainer.learning_rate"]: t for t in doc["trials"]}
    assert by_lr[1e-3]["state"] == "COMPLETE" and by_lr[1e30]["state"] == "FAIL"
    error = by_lr[1e30]["error"].lower()
    assert "nan" in error or "inf" in error or "not finite" in error
    assert run_json(by_lr[1e30])["status"] == "FAIL"


def test_a_killed_sweep_resumes_without_rerunning_completed_trials(tmp_path):
    # the default heartbeat (60 s): the rerun sees that the killed sweeper's pid is gone and does not wait
    # the heartbeat's 120 s grace for its trial to go stale
    args = ["trainer.learning_rate=tag(log, interval(1e-4, 1e-2))", "hydra.sweeper.n_trials=4",
            "hydra/sweeper/pruner=nop"]
    cmd = [sys.executable, "-m", "sllmx", "--multirun", *TINY, f"cache_dir={tmp_path.parent / 'cache'}", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill once trial 0 is done and trial 1 is training
            runs = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/[0-9]*/run.json")}
            if runs.get("0", {}).get("status") == "COMPLETE" and runs.get("1", {}).get("status") == "RUNNING":
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never reached trial 1")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (study_dir,) = tmp_path.glob("multirun/*")
    first = json.loads((study_dir / "0" / "run.json").read_text())

    again = sllmx_multirun(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    doc = sweep_json(tmp_path)
    finished = [t for t in doc["trials"] if t["state"] == "COMPLETE"]
    assert len(finished) == 4  # the study reached n_trials
    assert json.loads((study_dir / "0" / "run.json").read_text()) == first  # trial 0 was not re-run
    killed = next(t for t in doc["trials"] if t["number"] == 1)
    assert killed["state"] == "FAIL" and "stale heartbeat" in killed["error"]
    retry = next(t for t in doc["trials"] if t["retry_of"] == 1)
    assert retry["params"] == killed["params"] and retry["state"] == "COMPLETE"
    assert retry["number"] == 2  # re-queued at once, before any new trial
    assert "Heartbeat of storage" not in again.stderr
    assert json.loads((study_dir / "1" / "run.json").read_text())["status"] == "RUNNING"  # left as evidence


@pytest.mark.slow  # two sweeper processes (~30 s); a killed sweep resuming from the storage stays in the default suite
def test_two_workers_share_one_study(tmp_path):
    args = ["trainer.learning_rate=tag(log, interval(1e-4, 1e-2))", "hydra.sweeper.n_trials=6",
            "hydra/sweeper/pruner=nop", "hydra.sweeper.heartbeat_interval=2"]
    cmd = [sys.executable, "-m", "sllmx", "--multirun", *TINY, f"cache_dir={tmp_path.parent / 'cache'}", *args]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=900) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    doc = sweep_json(tmp_path)
    numbers = [t["number"] for t in doc["trials"]]
    assert sorted(numbers) == list(range(len(numbers))) and doc["counts"]["COMPLETE"] == 6
    pids = {run_json(t)["pid"] for t in doc["trials"]}
    assert pids == {w.pid for w in workers}  # both workers ran trials
    dirs = [t["run_dir"] for t in doc["trials"]]
    assert len(set(dirs)) == len(dirs)


def test_joblib_launcher_runs_trials_in_parallel_processes_with_pruning(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = sllmx_multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                          # the seeded grid runs the two large rates first (batch 1), then the two tiny ones, which
                          # the pruner then stops: their loss is worse than batch 1's best (percentile 0)
                          "trainer.learning_rate=choice(1e-5, 1e-6, 3e-2, 1e-2)", "hydra/sweeper/sampler=grid",
                          "hydra/sweeper/pruner=percentile", "hydra.sweeper.pruner.percentile=0",
                          "hydra.sweeper.pruner.n_startup_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert doc["counts"]["COMPLETE"] + doc["counts"]["PRUNED"] == 4
    records = [run_json(t) for t in doc["trials"]]
    assert len({r["pid"] for r in records}) >= 2  # joblib's worker processes, not the sweeper
    assert "PRUNED" in [r["status"] for r in records], [(t["params"], t["state"]) for t in doc["trials"]]
    for t, r in zip(doc["trials"], records):
        assert r["status"] == t["state"]
    # trials of one batch ran at the same time
    spans = sorted((r["started_at"], r["finished_at"]) for r in records)
    assert spans[1][0] < spans[0][1]


# -- PostgreSQL storage ---------------------------------------------------------------------------------

def _postgres_bin() -> "Path | None":
    import glob
    import shutil

    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[::-1]), None)
    return Path(found).resolve().parent if found else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free local port (run as the ``postgres`` user when we are root)."""
    import pwd
    import shutil
    import socket
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg (the postgres extra) is not installed")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does this)")
    run_as: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="sllmx-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(home, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        return subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)

    init = pg(str(bindir / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
    assert init.returncode == 0, init.stderr
    start = pg(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-o",
               f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    assert start.returncode == 0, start.stderr + (home / "log").read_text()
    try:
        created = pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sllmx")
        assert created.returncode == 0, created.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/sllmx"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_a_study_in_postgresql_storage(tmp_path, postgres_url):
    args = ["trainer.learning_rate=tag(log, interval(1e-4, 1e-2))", "hydra.sweeper.n_trials=3",
            "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
            f"hydra.sweeper.storage={postgres_url}",
            "hydra.sweeper.study_name=pg-study"]
    proc = sllmx_multirun(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    assert doc["storage"] == postgres_url and doc["study_name"] == "pg-study"
    assert not list(tmp_path.glob("multirun/*/optuna.db"))  # nothing went to the SQLite default
    study = optuna.load_study(study_name="pg-study", storage=postgres_url)
    assert len(study.trials) == 3
    assert [t.number for t in study.trials] == [t["number"] for t in doc["trials"]]
    for t in study.trials:  # the jobs reported their dev evaluations into PostgreSQL
        assert t.intermediate_values and t.state.name in ("COMPLETE", "PRUNED")
    again = sllmx_multirun(tmp_path, *args)  # the same command: the study is complete, nothing re-runs
    assert again.returncode == 0 and len(optuna.load_study(study_name="pg-study", storage=postgres_url).trials) == 3


# -- W&B and the test split -----------------------------------------------------------------------------

def test_wandb_groups_trials_by_study_and_logs_the_sweep_summary(tmp_path):
    proc = sllmx_multirun(tmp_path, "logger=wandb", "trainer.learning_rate=choice(1e-3, 1e-2)",
                          "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=nop", "hydra.sweeper.study_name=wb",
                          env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = sweep_json(tmp_path)
    for trial in doc["trials"]:  # offline runs are protobuf logs; their strings are stored as is
        (log,) = Path(trial["run_dir"]).glob("wandb/offline-run-*/run-*.wandb")
        data = log.read_bytes()
        assert b"wb" in data and f"trial-{trial['number']}-lora-sft".encode() in data and b"trial_number" in data
    (summary,) = (tmp_path / "multirun" / "wb").glob("wandb/offline-run-*/run-*.wandb")
    data = summary.read_bytes()
    assert b"wb-summary" in data and b"best/value" in data and b"trials" in data


def test_a_resumed_or_second_worker_does_not_replay_the_same_draws(tmp_path):
    from sllmx.sweep.loop import AskTellLoop

    space, _ = parse_search_space(["a=tag(log, interval(1e-5, 1e-2))", "b=choice(4, 8, 16, 32)"], {})
    samplers = Samplers({"_target_": "optuna.samplers.TPESampler", "seed": 0}, space)
    samplers.check()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def worker():
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
        loop = AskTellLoop(study, space, samplers, None, (storage, "s"), 3, 1, 60, None, None, None)
        trial = loop.ask()
        study.tell(trial, 1.0)
        return trial.number, trial.params

    first = [worker() for _ in range(3)]      # three "processes" in turn, each with a fresh sampler
    assert len({json.dumps(p, sort_keys=True) for _, p in first}) == 3
    fresh = tmp_path / "again"
    fresh.mkdir()
    storage = f"sqlite:///{fresh / 'optuna.db'}"
    assert [worker() for _ in range(3)] == first  # and the same seed gives the same study again


@pytest.mark.parametrize("name, kwargs", [
    ("median", {"n_startup_trials": 1}), ("percentile", {"n_startup_trials": 1}),
    ("successive_halving", {"min_resource": 1}), ("hyperband", {"min_resource": 1, "max_resource": 4}),
    ("nop", {})])
def test_each_pruner_stops_a_bad_trial_reached_through_the_storage(tmp_path, name, kwargs):
    """What a job in another process does: rebuild the trial from storage, report, get pruned."""
    import contextlib
    from types import SimpleNamespace

    from sllmx.sweep.config import PRUNER_NODES
    from sllmx.trial import TrialReporter, open_trial

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = {**vars(PRUNER_NODES[name]()), **kwargs}  # the node as the sweeper stores it
    study = optuna.create_study(study_name="s", storage=storage, pruner=pruner_from_spec(spec))
    study.set_user_attr(PRUNER_ATTR, spec)
    for i in range(12):  # finished trials with good curves (enough for every hyperband bracket)
        t = study.ask()
        for step in (1, 2, 3, 4):
            t.report(1.0 + 0.01 * i - 0.1 * step, step)
            t.should_prune()  # as their jobs did: successive halving records its rungs here
        study.tell(t, 0.6 + 0.01 * i)
    bad = study.ask()
    trial = open_trial(SimpleNamespace(study_name="s", storage=storage, number=bad.number))
    assert trial is not None and trial.number == bad.number
    reporter = TrialReporter(trial, "eval_loss", SimpleNamespace(training=True))
    expect = contextlib.nullcontext() if name == "nop" else pytest.raises(RunStopped, match="pruned at step")
    with expect:
        for step in (1, 2, 3, 4):
            reporter.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_loss": 5.0})
    assert optuna.load_study(study_name="s", storage=storage).trials[-1].intermediate_values  # reported to storage


def test_a_job_refuses_a_trial_that_is_not_running(tmp_path):
    from types import SimpleNamespace

    from sllmx.trial import open_trial

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask(), 1.0)
    with pytest.raises(SllmxError, match="COMPLETE, not RUNNING"):
        open_trial(SimpleNamespace(study_name="s", storage=storage, number=0))
    with pytest.raises(SllmxError, match="no such trial"):
        open_trial(SimpleNamespace(study_name="s", storage=storage, number=7))
    with pytest.raises(SllmxError, match="no such study"):
        open_trial(SimpleNamespace(study_name="other", storage=storage, number=0))


# -- multi-objective studies ------------------------------------------------------------------------------

def test_objectives_and_directions_are_resolved_and_checked_before_anything_runs():
    from sllmx.sweep.objectives import resolve

    assert resolve(None, None, "eval_loss", False) == (["eval_loss"], ["minimize"])
    assert resolve("maximize", None, "eval_acc", True) == (["eval_acc"], ["maximize"])
    assert resolve(["minimize", "minimize"], ["eval_loss", "peak_memory"], "eval_loss", False) == (
        ["eval_loss", "peak_memory"], ["minimize", "minimize"])
    assert resolve(None, ["eval_acc", "train_tokens_per_s"], "eval_acc", True)[1] == ["maximize", "maximize"]
    for direction, objectives, message in [
            (["minimize"], ["eval_loss", "peak_memory"], "1 direction(s) and hydra.sweeper.objectives 2"),
            ("minimize", ["eval_loss", "memory"], "unknown objective 'memory'"),
            (["minimize", "down"], ["eval_loss", "wall_time_s"], "direction=down"),
            (None, ["eval_loss", "eval_accuracy"], "eval_accuracy has no default direction")]:
        with pytest.raises(SllmxError, match=re.escape(message)) as info:
            resolve(direction, objectives, "eval_loss", False)
        assert "\n" not in str(info.value)


def _record(**fields):
    from sllmx.records import DevMetric

    dev = DevMetric("eval_loss", False, best=1.5, best_step=6, history=[
        {"step": 3, "value": 2.0, "metrics": {"eval_loss": 2.0, "eval_acc": 0.1}},
        {"step": 6, "value": 1.5, "metrics": {"eval_loss": 1.5, "eval_acc": 0.4}}])
    base = dict(dev_metric=dev, status="COMPLETE", global_steps=12, peak_rss_bytes=100, peak_gpu_bytes=None,
                trainable_params=7, wall_time_s=3.0, train_tokens_per_s=50.0)
    return type("Record", (), {**base, **fields})()


def test_a_job_is_told_as_its_objectives_values_and_a_missing_one_fails_it():
    from sllmx.sweep.sweeper import judge

    assert judge(_record(), "eval_loss").value == 1.5
    out = judge(_record(), "eval_loss", ["eval_loss", "peak_memory", "eval_acc", "trainable_params"])
    assert out.state == "COMPLETE" and out.value == [1.5, 100.0, 0.4, 7.0]
    assert judge(_record(peak_gpu_bytes=900), "eval_loss", ["eval_loss", "peak_memory"]).value == [1.5, 900.0]
    out = judge(_record(wall_time_s=None), "eval_loss", ["eval_loss", "wall_time_s"])
    assert out.state == "FAIL" and "wall_time_s" in out.error
    assert judge(_record(status="PRUNED", pruned="x"), "eval_loss", ["eval_loss", "peak_memory"]).state == "PRUNED"


def test_a_study_reopened_with_other_objectives_is_one_line_and_cmaes_is_refused(tmp_path):
    from sllmx.sweep.study import open_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study("s", url, ["minimize", "minimize"], "eval_loss", optuna.samplers.NSGAIISampler(seed=0),
                       {}, 60, 2, ["eval_loss", "peak_memory"])
    assert len(study.directions) == 2
    with pytest.raises(SllmxError, match="created with 2 objective") as info:
        open_study("s", url, ["minimize"], "eval_loss", None, {}, 60, 2)
    assert "\n" not in str(info.value)
    with pytest.raises(SllmxError, match="has objectives"):
        open_study("s", url, ["minimize", "minimize"], "eval_loss", None, {}, 60, 2, ["eval_loss", "wall_time_s"])
    open_study("t", url, ["minimize"], "eval_loss", None, {}, 60, 2)
    with pytest.raises(SllmxError, match="created with 1 objective"):
        open_study("t", url, ["minimize", "minimize"], "eval_loss", None, {}, 60, 2, ["eval_loss", "peak_memory"])
    samplers = Samplers({"_target_": "optuna.samplers.CmaEsSampler", "seed": 0}, _space())
    samplers.check()
    with pytest.raises(SllmxError, match="cmaes cannot optimise several objectives"):
        samplers.check(2)


def test_the_pareto_front_is_written_to_sweep_json(tmp_path):
    from sllmx.sweep.results import SweepResults
    from sllmx.sweep.study import open_study

    study = open_study("mo", f"sqlite:///{tmp_path / 'optuna.db'}", ["minimize", "minimize"], "eval_loss",
                       optuna.samplers.RandomSampler(seed=0), {}, 60, 2, ["eval_loss", "peak_memory"])
    space, _ = parse_search_space(["method.r=choice(4, 8)"], {})
    for r, values in [(4, [1.0, 5.0]), (8, [2.0, 1.0]), (8, [3.0, 6.0])]:
        trial = study.ask({"method.r": CategoricalDistribution([4, 8])})
        study.tell(trial, values)
    results = SweepResults("mo", "sqlite:///x", ["minimize", "minimize"], "eval_loss", {}, {}, 3, space, [],
                           tmp_path, objectives=["eval_loss", "peak_memory"], directions=["minimize", "minimize"])
    assert results.write(study) is None
    doc = json.loads(results.path.read_text())
    assert doc["best_trial"] is None and doc["objectives"] == ["eval_loss", "peak_memory"]
    assert [(t["number"], t["values"]) for t in doc["pareto_front"]] == [
        (0, {"eval_loss": 1.0, "peak_memory": 5.0}), (1, {"eval_loss": 2.0, "peak_memory": 1.0})]
    assert doc["trials"][2]["values"] == [3.0, 6.0] and doc["trials"][2]["value"] is None


def test_multi_objective_sweep_writes_and_prints_its_pareto_front(tmp_path):
    proc = sllmx_multirun(tmp_path, "method=choice(lora, qlora, dora, prompt_tuning)", "hydra/sweeper/sampler=nsgaii",
                          "hydra.sweeper.direction=[minimize, minimize]",
                          "hydra.sweeper.objectives=[eval_loss, peak_memory]", "hydra.sweeper.n_trials=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pruning does not apply to a multi-objective study") == 1
    doc = sweep_json(tmp_path)
    assert doc["objectives"] == ["eval_loss", "peak_memory"] and doc["best_trial"] is None
    assert doc["pruner"]["_target_"] == "optuna.pruners.NopPruner"
    done = {t["number"]: t for t in doc["trials"] if t["state"] == "COMPLETE"}
    assert len(done) == 4 and all(t["intermediate_values"] == {} for t in done.values())
    front = doc["pareto_front"]
    assert front and all(t["number"] in done for t in front)
    for entry in front:  # no completed trial dominates a front trial
        mine = list(entry["values"].values())
        assert not any(all(a <= b for a, b in zip(t["values"], mine)) and t["values"] != mine for t in done.values())
        record = run_json(done[entry["number"]])
        assert entry["values"]["eval_loss"] == pytest.approx(record["dev_metric"]["best"])
        assert entry["values"]["peak_memory"] == (record["peak_gpu_bytes"] or record["peak_rss_bytes"])
        assert f"front trial {entry['number']}: eval_loss=" in proc.stdout
