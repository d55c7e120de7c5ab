"""``hydra.sweeper.*`` of ``hydra/sweeper=sllmx_optuna`` and its ``sampler`` / ``pruner`` config groups.

As in Hydra's Optuna sweeper (``hydra_plugins/hydra_optuna_sweeper/config.py``), a sampler and a pruner
are ``_target_`` nodes in Hydra's ConfigStore, under ``hydra/sweeper/sampler`` and
``hydra/sweeper/pruner``; each node holds its Optuna class's own keyword arguments with Optuna's
defaults (except where noted), and the sweeper builds it with ``hydra.utils.instantiate``::

    hydra/sweeper/sampler=random hydra.sweeper.sampler.seed=3
    hydra/sweeper/pruner=hyperband hydra.sweeper.pruner.min_resource=2

The defaults list picks ``tpe`` and ``successive_halving`` (with its first rung at the first dev
evaluation: ``benchmarks/sweeps.py`` measured it against the other pruners).  An unknown name is Hydra's own error ("Could not
find 'hydra/sweeper/sampler/xyz'", with the available names), an unknown argument Hydra's
"Key 'xyz' is not in struct".  Samplers: https://optuna.readthedocs.io/en/stable/reference/samplers/index.html;
pruners: https://optuna.readthedocs.io/en/stable/reference/pruners.html.

Nothing here imports Optuna: Hydra reads this module at every start-up.
"""

# No ``from __future__ import annotations``: OmegaConf reads these annotations as types.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sllmx.config import option

PROVIDER = "sllmx"
SWEEPER_TARGET = "hydra_plugins.sllmx_optuna_sweeper.sllmx_optuna_sweeper.SllmxOptunaSweeper"


# -- samplers: seed defaults to 0 (sllmx's choice: a sweep is reproducible unless seed=null) ------------

@dataclass
class TPESamplerConf:
    """Tree-structured Parzen Estimator (Bergstra et al., 2011, "Algorithms for Hyper-Parameter
    Optimization"; Watanabe, 2023, arXiv:2304.11127).  Random for ``n_startup_trials`` trials, then
    models good and bad trials.  Callables (``gamma``, ``weights``, ``constraints_func``) can be given as
    ``_target_`` nodes."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = 0
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    gamma: Optional[Any] = None
    weights: Optional[Any] = None
    multivariate: Optional[bool] = None
    group: bool = False
    warn_independent_sampling: Optional[bool] = None
    constant_liar: bool = True
    constraints_func: Optional[Any] = None


@dataclass
class RandomSamplerConf:
    """Independent uniform (or log-uniform) draws (Bergstra & Bengio, 2012, "Random Search for
    Hyper-Parameter Optimization")."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = 0


@dataclass
class GridSamplerConf:
    """Every combination of the ``choice``/``range`` values once (``n_trials`` is capped at the grid's
    size); ``search_space`` is filled from the sweep's parameters (``_partial_``, as in Hydra's), and the
    grid is shuffled with ``seed``.  An ``interval`` cannot be walked: refused."""

    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: Optional[int] = 0


@dataclass
class CmaEsSamplerConf:
    """CMA-ES (Hansen, 2016, arXiv:1604.00772, through the ``cmaes`` package) for int and float
    parameters; categorical ones fall back to ``independent_sampler`` (random).  sllmx's default
    ``warn_independent_sampling=false`` (Optuna: true) keeps that fallback quiet."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = 0
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    independent_sampler: Optional[Any] = None
    warn_independent_sampling: bool = False
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    source_trials: Optional[Any] = None


@dataclass
class NSGAIISamplerConf:
    """NSGA-II, a genetic algorithm (Deb et al., 2002); meant for multi-objective studies."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = 0
    population_size: int = 50
    mutation: Optional[Any] = None
    mutation_prob: Optional[float] = None
    crossover: Optional[Any] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Optional[Any] = None
    elite_population_selection_strategy: Optional[Any] = None
    child_generation_strategy: Optional[Any] = None
    after_trial_strategy: Optional[Any] = None


@dataclass
class QMCSamplerConf:
    """Quasi-Monte Carlo: low-discrepancy (Sobol or Halton) points, which cover a space more evenly
    than random draws (Bergstra & Bengio, 2012)."""

    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = 0
    qmc_type: str = "sobol"
    scramble: bool = False
    independent_sampler: Optional[Any] = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConf:
    """Gaussian-process Bayesian optimisation with log expected improvement (Ament et al., 2023,
    arXiv:2310.20708); needs torch and scipy."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = 0
    independent_sampler: Optional[Any] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Optional[Any] = None
    warn_independent_sampling: bool = True


SAMPLER_NODES = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "grid": GridSamplerConf,
                 "cmaes": CmaEsSamplerConf, "nsgaii": NSGAIISamplerConf, "qmc": QMCSamplerConf, "gp": GPSamplerConf}


# -- pruners: each dev evaluation of a trial is one step ------------------------------------------------

@dataclass
class MedianPrunerConf:
    """Prune when the trial's best value so far is worse than the median of the other trials' values at
    the same step (Golovin et al., 2017, "Google Vizier")."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    """Prune when the trial is outside the best ``percentile`` % at the same step (sllmx's default 25.0;
    Optuna's has none)."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    """Asynchronous successive halving (Li et al., 2020, "A System for Massively Parallel Hyperparameter
    Tuning"; Jamieson & Talwalkar, 2016)."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    # the first rung at the first dev evaluation (the step reported is the optimizer step); Optuna's "auto"
    # takes the longest finished trial's steps / 100, i.e. 1 step for short fine-tuning runs
    min_resource: Any = "${eval.eval_steps}"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    """Hyperband: several successive-halving brackets (Li et al., 2018, JMLR 18(185))."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: Any = "${eval.eval_steps}"  # as successive halving's: the first dev evaluation
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class NopPrunerConf:
    """No pruning: every trial trains its full budget."""

    _target_: str = "optuna.pruners.NopPruner"


PRUNER_NODES = {"median": MedianPrunerConf, "percentile": PercentilePrunerConf,
                "successive_halving": SuccessiveHalvingPrunerConf, "hyperband": HyperbandPrunerConf,
                "nop": NopPrunerConf}


# -- the sweeper --------------------------------------------------------------------------------------

@dataclass
class SllmxOptunaSweeperConf:
    """``hydra.sweeper.*``: the study, its sampler and pruner nodes, and the search space."""

    _target_: str = SWEEPER_TARGET
    # the sampler and pruner nodes reach the sweeper as config (it instantiates them per trial)
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "successive_halving"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    study_name: Optional[str] = option(
        "Optuna study name; null: <sweep or method-trainer>-<hash of the overrides, search space, sampler and "
        "pruner>, so the same command resumes the same study", None)
    storage: Optional[str] = option(
        "Optuna storage URL (sqlite:///..., postgresql://user@host/db, mysql+pymysql://...); "
        "null: sqlite:///<sweep dir>/optuna.db", None)
    direction: Optional[Any] = option(
        "minimize or maximize, or a list of them, one per objective ([minimize, minimize]: a multi-objective "
        "study); null: from the dev metric's higher_is_better", None)
    objectives: Optional[List[str]] = option(
        "run-record values the study optimises, one per direction: the dev metric, eval_<key> (at the best step), "
        "trainable_params, peak_memory, peak_rss_bytes, peak_gpu_bytes, wall_time_s, train_tokens_per_s; "
        "null: the dev metric", None)
    n_trials: int = option("trials in the study (COMPLETE + PRUNED + FAIL); running again resumes up to this", 20)
    n_jobs: int = option("trials launched at once (one launcher batch); parallel with joblib/submitit/ray", 1)
    params: Dict[str, str] = option(
        "search space {config key: choice(...) | range(...) | interval(...) | tag(log, ...)}; "
        "command-line sweeps of the same key win", {})
    heartbeat_interval: int = option(
        "seconds between heartbeats of running trials; a trial silent for twice this long (its worker was "
        "killed) is marked FAIL and re-queued with the same parameters", 60)
    max_retry: int = option("re-queue a killed trial at most this many times", 2)
    max_failure_rate: float = option(
        "stop the sweep with an error when more than this share of one batch's trials (n_jobs launched together) "
        "FAIL, as in Hydra's Optuna sweeper (whose default is 0.0); sllmx's 1.0: failed trials are recorded and "
        "the sweep goes on", 1.0, ge=0.0, le=1.0)
    custom_search_space: Optional[str] = option(
        "module.function called with (config, trial) after the params are sampled, to suggest more parameters "
        "with Optuna's trial.suggest_* (named by their override keys), as in Hydra's Optuna sweeper", None)


def register() -> None:
    """Store the sweeper (``hydra/sweeper=sllmx_optuna``) and its sampler and pruner groups in Hydra's
    ConfigStore.  Called when the Hydra plugin is imported."""
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="sllmx_optuna", node=SllmxOptunaSweeperConf, provider=PROVIDER)
    for name, node in SAMPLER_NODES.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider=PROVIDER)
    for name, node in PRUNER_NODES.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider=PROVIDER)
