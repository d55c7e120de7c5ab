"""Ready ``hydra.sweeper.custom_search_space`` functions: ``function(config, trial)``, Hydra's Optuna sweeper's
signature, called after the ``params:`` are sampled; each suggests more parameters with Optuna's
``trial.suggest_*``, named by their override keys.

    hydra.sweeper.custom_search_space=sllmx.sweep.custom.lora_alpha_per_rank

Reference: Optuna's define-by-run search spaces
(https://optuna.readthedocs.io/en/stable/tutorial/10_key_features/002_configurations.html); Hydra's Optuna
sweeper's ``custom_search_space`` (``hydra_plugins/hydra_optuna_sweeper/_impl.py``).
"""

from __future__ import annotations

from typing import Any


def lora_alpha_per_rank(config: Any, trial: Any) -> None:
    """``method.lora_alpha`` in {r, 2r, 3r, 4r} for the trial's ``method.r`` (its sampled value, else the
    config's): the LoRA update is scaled by ``lora_alpha / r`` (Hu et al., 2021, arXiv:2106.09685), so this
    sweeps the scale from 1 to 4 whatever rank the trial drew.  Optuna allows a numeric range that depends
    on another parameter (define-by-run)."""
    rank = int(trial.params.get("method.r", config.method.r))
    trial.suggest_int("method.lora_alpha", rank, 4 * rank, step=rank)
