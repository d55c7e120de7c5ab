"""Every built-in method × trainer trains and evaluates end to end on model=tiny."""

import itertools
import math

import pytest

from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import FAST, compose_config

METHODS = ["lora", "qlora", "dora", "prompt_tuning", "full"]
#: issue 19's PEFT methods: each trains with SFT in the default suite, with every objective under -m slow
MORE_METHODS = ["prefix_tuning", "ia3", "adalora", "loha", "lokr", "vera"]
TRAINERS = ["sft", "dpo", "orpo", "kto"]
#: issue 19's objectives: with lora and prompt_tuning in the default suite, with every method under -m slow
MORE_TRAINERS = ["cpo", "simpo"]
PROMPT_LEARNING = ("prompt_tuning", "prefix_tuning")
#: combinations refused before loading (test_bad_lora_and_adalora_options_are_one_line_before_loading)
REFUSED = {("adalora", "dpo"), ("adalora", "kto")}


def _grid():
    for method, trainer in itertools.product(METHODS + MORE_METHODS, TRAINERS + MORE_TRAINERS):
        if (method, trainer) in REFUSED:
            continue
        if trainer in MORE_TRAINERS:
            slow = method != "lora"
        else:
            slow = method in MORE_METHODS and trainer != "sft"
        yield pytest.param(method, trainer, marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("method,trainer", list(_grid()))
def test_combination_trains_evaluates_and_records(method, trainer, tmp_path, cache_dir):
    lr = ["trainer.learning_rate=0.05"] if method in PROMPT_LEARNING else ["trainer.learning_rate=0.001"]
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


# -- LoRA's options (issue 19): each shows in the saved adapter's config, and the saved adapter reloads -------------


@pytest.mark.parametrize("option,expected", [
    pytest.param("use_rslora=true", ("use_rslora", True), marks=pytest.mark.slow),
    ("init_lora_weights=pissa", ("init_lora_weights", "pissa")),
    pytest.param("init_lora_weights=olora", ("init_lora_weights", "olora"), marks=pytest.mark.slow)])
def test_lora_option_shows_in_adapter_config_and_the_adapter_reloads(option, expected, tmp_path, cache_dir):
    """The option reaches peft.LoraConfig (adapter_config.json); the saved adapter loaded on the base model by
    sllmx.evaluate scores the dev split as the run's last evaluation did (PiSSA and OLoRA move part of each base
    weight into the adapter: PEFT redoes that when it loads the adapter)."""
    import json

    from sllmx.evaluate import evaluate

    cfg = compose_config([*FAST, "method=lora", f"method.{option}", "trainer.learning_rate=0.001"], tmp_path / "run",
                         cache_dir)
    record = run(cfg)
    assert record.status == "COMPLETE"
    adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert adapter[expected[0]] == expected[1]
    again = evaluate(str(tmp_path / "run"), [f"cache_dir={cache_dir}"], str(tmp_path / "again"))
    assert again.dev_metric.baseline == pytest.approx(record.dev_metric.best, rel=1e-4)  # the saved (selected) model


def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate(tmp_path, cache_dir):
    """method.loraplus_lr_ratio: PEFT's LoRA+ optimizer, A at trainer.learning_rate and B at ratio times it."""
    seen = {}
    from sllmx_plugins import methods

    original = methods.LoRA.optimizer

    def spy(self, model, cfg, args):
        optimizer = original(self, model, cfg, args)
        seen["lrs"] = sorted({g["lr"] for g in optimizer.param_groups if g["params"]})
        return optimizer

    methods.LoRA.optimizer = spy
    try:
        record = run(compose_config([*FAST, "method=lora", "method.loraplus_lr_ratio=16", "trainer.learning_rate=0.001"],
                                    tmp_path / "run", cache_dir))
    finally:
        methods.LoRA.optimizer = original
    assert record.status == "COMPLETE" and record.dev_metric.history[-1]["value"] != record.dev_metric.baseline
    assert seen["lrs"] == [pytest.approx(0.001), pytest.approx(0.016)]


def test_adalora_prunes_ranks_by_the_trainers_steps_and_its_saved_adapter_reloads(tmp_path, cache_dir):
    """The rank schedule runs over the trainer's steps (total_step = max_steps); the saved adapter keeps every rank
    (pruned ones zero), so it reloads as the selected model whichever step was best."""
    import json

    from safetensors.torch import load_file

    from sllmx.evaluate import evaluate

    record = run(compose_config([*FAST, "method=adalora", "method.init_r=4", "method.target_r=2",
                                 "trainer.learning_rate=0.01"], tmp_path / "run", cache_dir))
    assert record.status == "COMPLETE"
    saved = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["total_step"] == 4 and saved["rank_pattern"] is None
    weights = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    e = [w for k, w in weights.items() if "lora_E" in k]
    zeros, total = sum(int((w == 0).sum()) for w in e), sum(w.numel() for w in e)
    assert e and 0 < zeros < total  # E starts at 0 and trains; the budget set some back to 0 (pruned ranks)
    again = evaluate(str(tmp_path / "run"), [f"cache_dir={cache_dir}"], str(tmp_path / "again"))
    assert again.dev_metric.baseline == pytest.approx(record.dev_metric.best, rel=1e-4)


def test_bad_lora_and_adalora_options_are_one_line_before_loading(tmp_path):
    from sllmx.errors import SllmxError

    for overrides, message in ((["method=lora", "method.init_lora_weights=eva"], "method.init_lora_weights=eva: use one of"),
                               (["method=adalora", "method.target_r=16", "method.init_r=8"], "method.target_r=16 is above"),
                               (["method=adalora", "method.tinit=2", "method.tfinal=2"], "leave no step to allocate"),
                               (["method=adalora", "trainer=dpo"], "PEFT's AdaLoRA allows only one"),
                               (["method=adalora", "trainer=kto"], "PEFT's AdaLoRA allows only one"),
                               (["method=lora", "method.init_lora_weights=pissa", "trainer=dpo"],
                                "trainer=dpo's reference model"),
                               (["method=qlora", "method.init_lora_weights=olora"], "which QLoRA holds in 4 bits"),
                               (["method=lora", "method.init_lora_weights=orthogonal", "method.r=3"], "needs an even"),
                               (["method=prefix_tuning", "trainer.gradient_checkpointing=true"],
                                "cannot train with trainer.gradient_checkpointing=true"),
                               (["method=lora", "method.loraplus_lr_ratio=0.5"], "loraplus_lr_ratio")):
        with pytest.raises(SllmxError, match=message):
            run(compose_config([*FAST, *overrides], tmp_path / "run", tmp_path / "cache"))
        assert not (tmp_path / "run" / "run.json").exists()
