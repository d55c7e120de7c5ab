"""Chains of stages (issue 19): a finished run as the base of the next (model=run model.run_dir=RUN)."""

import json

import pytest

from sllmx.errors import SllmxError
from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import FAST, compose_config

#: FAST on a finished run's model instead of the tiny one
NEXT = [o for o in FAST if o != "model=tiny"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("chain") / "sft"
    record = run(compose_config([*FAST, "method=lora", "trainer.learning_rate=0.003"], out, cache_dir))
    assert record.status == "COMPLETE"
    return out, record


def test_merge_trains_a_new_adapter_on_the_merged_model_and_links_the_runs(sft_run, tmp_path, cache_dir):
    """The next stage starts from the SFT model (its dev loss before training is the SFT run's selected one), its
    run.json names the run it came from, and a third stage reads back the whole chain."""
    from sllmx.comparison import trainer_label

    sft_dir, sft = sft_run
    second = run(compose_config([*NEXT, "model=run", f"model.run_dir={sft_dir}", "trainer.learning_rate=0.003"],
                                tmp_path / "sft2", cache_dir))
    assert second.status == "COMPLETE" and second.model["run_dir"] == str(sft_dir)
    assert second.dev_metric.baseline == pytest.approx(sft.dev_metric.best, rel=1e-4)  # the merged SFT model
    lineage = second.model_facts["lineage"]
    assert lineage["run_dir"] == str(sft_dir.resolve()) and lineage["trainer"] == "sft" and lineage["parent"] is None
    assert lineage["adapter"] == "merge"
    assert (second.trainable_params or 0) > 0 and (tmp_path / "sft2" / "model" / "adapter_config.json").exists()

    third = run(compose_config([*NEXT, "model=run", f"model.run_dir={tmp_path / 'sft2'}", "trainer=dpo"],
                               tmp_path / "dpo", cache_dir))
    assert third.status == "COMPLETE"
    assert third.model_facts["lineage"]["parent"]["run_dir"] == str(sft_dir.resolve())
    assert trainer_label(RunRecord.read(tmp_path / "dpo")) == "sft→sft→dpo"


def test_continue_trains_the_runs_own_adapter_further(sft_run, tmp_path, cache_dir):
    sft_dir, sft = sft_run
    record = run(compose_config([*NEXT, "model=run", f"model.run_dir={sft_dir}", "model.adapter=continue",
                                 "method.r=4"], tmp_path / "more", cache_dir))
    assert record.status == "COMPLETE"
    assert record.dev_metric.baseline == pytest.approx(sft.dev_metric.best, rel=1e-4)
    assert record.trainable_params == sft.trainable_params  # the saved adapter (r=16), not method.r=4
    saved = json.loads((tmp_path / "more" / "model" / "adapter_config.json").read_text())
    assert saved["r"] == 16 and record.dev_metric.history[-1]["value"] != record.dev_metric.baseline


def test_bad_chains_are_one_line_before_loading(sft_run, tmp_path):
    sft_dir, _ = sft_run
    with pytest.raises(SllmxError, match="model.adapter=continue trains .* LORA adapter further, which "
                                         "method=prompt_tuning does not make"):
        run(compose_config([*NEXT, "model=run", f"model.run_dir={sft_dir}", "model.adapter=continue",
                            "method=prompt_tuning"], tmp_path / "a", tmp_path / "cache"))
    with pytest.raises(SllmxError, match="no such run folder"):
        run(compose_config([*NEXT, "model=run", f"model.run_dir={tmp_path / 'nope'}"], tmp_path / "b",
                           tmp_path / "cache"))
    assert not (tmp_path / "a" / "run.json").exists() and not (tmp_path / "b" / "run.json").exists()


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_the_test_split_is_scored_against_the_reference_training_started_from(trainer, tmp_path, cache_dir):
    """TRL gives a PEFT model a frozen copy of its adapter as the reference ("ref"); the test split's evaluation
    builds a second trainer on the trained model, which keeps that reference (not a copy of the trained adapter,
    which would score every margin 0 and the loss ln 2)."""
    import math

    record = run(compose_config([*FAST, f"trainer={trainer}", "trainer.learning_rate=0.01", "eval.test=true"],
                                tmp_path / "run", cache_dir))
    assert record.status == "COMPLETE"
    test = record.test_metrics
    assert abs(test["test_loss"] - math.log(2)) > 1e-3 and abs(test["test_rewards/margins"]) > 1e-3, test
