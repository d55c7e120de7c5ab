"""Every built-in method × trainer trains and evaluates end to end on model=tiny."""

import itertools
import math

import pytest

from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import FAST, compose_config

METHODS = ["lora", "qlora", "dora", "prompt_tuning", "full"]
TRAINERS = ["sft", "dpo", "orpo", "kto"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("method,trainer", list(itertools.product(METHODS, TRAINERS)))
def test_combination_trains_evaluates_and_records(method, trainer, tmp_path, cache_dir):
    lr = ["trainer.learning_rate=0.05"] if method == "prompt_tuning" else ["trainer.learning_rate=0.001"]
    cfg = compose_config([*FAST, f"method={method}", f"trainer={trainer}", *lr], tmp_path / "run", cache_dir)
    record = run(cfg)

    assert record.status == "COMPLETE"
    assert record.global_steps == 4
    on_disk = RunRecord.read(tmp_path / "run")
    dm = on_disk.dev_metric
    assert dm.name == "eval_loss" and dm.higher_is_better is False
    steps = [h["step"] for h in dm.history]
    assert steps == [0, 2, 4]
    assert all(math.isfinite(h["value"]) for h in dm.history)
    assert dm.best == min(h["value"] for h in dm.history[1:])
    assert dm.history[-1]["value"] != dm.baseline  # training changed the model
    assert "eval_json_fields" in dm.history[-1]["metrics"]  # the task metric ran on dev generations
    assert 0 < on_disk.trainable_params <= on_disk.total_params
    assert (on_disk.trainable_params == on_disk.total_params) == (method == "full")
    assert on_disk.train_tokens and on_disk.train_tokens_per_s > 0
    saved = tmp_path / "run" / "model"
    assert (saved / ("config.json" if method == "full" else "adapter_config.json")).exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
