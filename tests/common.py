"""Helpers shared by the tests: compose a config in-process and fast settings for model=tiny."""

from pathlib import Path

from hydra import compose, initialize_config_module

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

#: a run on the tiny model that trains 4 steps and evaluates 3 times (baseline, step 2, step 4)
FAST_RUN = [
    "model=tiny", "logger=none", "trainer.max_steps=4", "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=6", "trainer.logging_steps=2", "eval.eval_steps=2", "eval.max_new_tokens=24",
    "trainer.precision=fp32",  # auto picks bf16 on a CPU with native bf16: the same numbers on every machine
]
#: ... on a small sample of the built-in task
FAST = [*FAST_RUN, "data=support_ko", "data.n_train=24", "data.n_dev=6", "data.n_test=6"]


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path):
    """The config ``python -m sllmx <overrides>`` would run, with its output and cache in tmp folders."""
    from sllmx.compose import setup as _setup

    _setup()
    with initialize_config_module(config_module="sllmx.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, f"output_dir={output_dir}", f"cache_dir={cache_dir}"])
