"""sllmx's Hydra sweeper plugin (``hydra/sweeper=sllmx_optuna``); Hydra finds it in the ``hydra_plugins`` namespace."""
