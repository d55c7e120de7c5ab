"""One run's lifecycle: observer hooks, extra callbacks, the run record on failure, the dev metric choice."""

import json

import pytest
from transformers import TrainerCallback

from sllmx import hookimpl
from sllmx.errors import SllmxError
from sllmx.plugins import registry, typed
from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import FAST, compose_config


class Observer:
    """A plugin registered for one test: records what the lifecycle hooks saw."""

    def __init__(self, fail_in_callback=False, fail_in_hooks=False):
        self.fail_in_callback = fail_in_callback  # a callback's exception fails the run
        self.fail_in_hooks = fail_in_hooks  # an observer's exception is a warning line
        self.seen = []
        self.steps = 0

    @hookimpl
    def sllmx_callbacks(self, run):
        observer = self

        class CountSteps(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                observer.steps += 1

            def on_train_begin(self, args, state, control, **kwargs):
                if observer.fail_in_callback:
                    raise RuntimeError("boom from a plugin")

        return [CountSteps()]

    @hookimpl
    def sllmx_before_train(self, run):
        self.seen.append(("before_train", run.trainer.name, run.record.trainable_params))
        if self.fail_in_hooks:
            raise RuntimeError("boom before train")

    @hookimpl
    def sllmx_after_evaluate(self, run, metrics):
        self.seen.append(("after_evaluate", run.training, round(metrics["eval_loss"], 6)))
        self.where = (run.output_dir, run.method.name, run.trainer.name, run.step)
        if self.fail_in_hooks:
            raise ValueError("boom\nafter evaluate")

    @hookimpl
    def sllmx_after_run(self, record):
        self.seen.append(("after_run", record.status))
        if self.fail_in_hooks:
            raise KeyError("boom after run")


@pytest.fixture
def observer():
    plugins = []

    def add(**kw):
        plugin = Observer(**kw)
        registry().pm.register(plugin)
        plugins.append(plugin)
        return plugin

    yield add
    for plugin in plugins:
        registry().pm.unregister(plugin)


def test_hooks_see_the_whole_lifecycle(observer, tmp_path):
    obs = observer()
    record = run(compose_config(FAST, tmp_path / "run", tmp_path / "cache"))
    kinds = [s[0] for s in obs.seen]
    # the baseline evaluation is the first thing train() does (TrainingArguments.eval_on_start)
    assert kinds == ["before_train", "after_evaluate", "after_evaluate", "after_evaluate", "after_run"]
    assert obs.seen[1][1] is False and obs.seen[2][1] is True  # baseline, then training evaluations
    assert obs.seen[0][2] == record.trainable_params
    assert obs.steps == 4
    history = [h["value"] for h in record.dev_metric.history]
    assert [round(v, 6) for v in history] == [s[2] for s in obs.seen if s[0] == "after_evaluate"]
    assert obs.seen[-1] == ("after_run", "COMPLETE")


def test_a_failing_run_is_recorded_as_fail_with_its_error(observer, tmp_path):
    obs = observer(fail_in_callback=True)
    with pytest.raises(RuntimeError, match="boom"):
        run(compose_config(FAST, tmp_path / "run", tmp_path / "cache"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "FAIL"
    assert record["error"] == "RuntimeError: boom from a plugin"
    assert record["finished_at"] and record["wall_time_s"] > 0
    assert obs.seen[-1] == ("after_run", "FAIL")


def test_an_observer_that_raises_is_one_warning_line_and_the_run_goes_on(observer, tmp_path, capfd):
    obs = observer(fail_in_hooks=True)
    record = run(compose_config([*FAST, "trainer.max_steps=2", "save_model=false"], tmp_path / "run",
                                tmp_path / "cache"))
    assert record.status == "COMPLETE" and json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "COMPLETE"
    assert obs.where == (tmp_path / "run", "lora", "sft", 2)  # the run's identity and the evaluation's step
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("sllmx: warning: plugin ")]
    name = registry().pm.get_name(obs)  # a plugin registered by hand: pluggy's name for it
    assert lines[0] == f"sllmx: warning: plugin {name}: sllmx_before_train raised RuntimeError: boom before train"
    assert lines[1] == f"sllmx: warning: plugin {name}: sllmx_after_evaluate raised ValueError: boom after evaluate"
    assert lines[-1] == f"sllmx: warning: plugin {name}: sllmx_after_run raised KeyError: 'boom after run'"
    assert len(lines) == 1 + 2 + 1  # before train, two evaluations (steps 0 and 2), after run


def test_a_generation_metric_can_be_the_dev_metric(tmp_path):
    cfg = compose_config([*FAST, "eval.metric=json_fields", "eval.early_stopping_patience=null"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    dm = RunRecord.read(tmp_path / "run").dev_metric
    assert dm.name == "eval_json_fields" and dm.higher_is_better is True
    assert dm.best == max(h["value"] for h in dm.history[1:])
    lines = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"input", "reference", "prediction"} <= set(json.loads(lines[0]))
    assert record.artifacts["generations"] == "generations.jsonl"


def test_a_dev_metric_nobody_computes_is_refused(tmp_path):
    with pytest.raises(SllmxError, match="direction is unknown"):
        run(compose_config([*FAST, "eval.metric=made_up"], tmp_path / "run", tmp_path / "cache"))
    with pytest.raises(SllmxError, match="set data.metric=json_fields"):
        run(compose_config([*FAST, "eval.metric=json_exact", "data.metric=null"], tmp_path / "r2", tmp_path / "c"))
    assert not (tmp_path / "run").exists()


def test_a_pair_refused_by_a_plugin_stops_before_loading(observer, tmp_path):
    class Veto:
        @hookimpl
        def sllmx_check_combination(self, method, trainer, cfg):
            return "prompt tuning cannot learn KTO here" if (method.name, trainer.name) == (
                "prompt_tuning", "kto") else None

    veto = Veto()
    registry().pm.register(veto)
    try:
        with pytest.raises(SllmxError, match="method=prompt_tuning trainer=kto cannot work: prompt tuning"):
            run(compose_config([*FAST, "method=prompt_tuning", "trainer=kto"], tmp_path / "run", tmp_path / "c"))
    finally:
        registry().pm.unregister(veto)
    assert not (tmp_path / "run").exists()


def test_early_stopping_stops_on_a_dev_metric_without_improvement(tmp_path):
    # A random tiny model never produces the right JSON: json_fields stays 0, so patience 1 stops
    # training at the second evaluation during training (step 4 of 8).
    cfg = compose_config([*FAST, "trainer.max_steps=8", "eval.metric=json_fields", "eval.early_stopping_patience=1"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    assert [h["value"] for h in record.dev_metric.history] == [0.0, 0.0, 0.0]
    assert record.global_steps == 4 and record.status == "COMPLETE"


def test_wandb_offline_logs_config_metrics_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_config([*FAST, "logger=wandb", "logger.group=study-1", "logger.tags=[a,b]"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    import wandb

    assert wandb.run is None  # finished
    wandb.teardown()  # the wandb-core service writes the log asynchronously; a CLI run flushes it at exit
    # The offline run is a protobuf log (no JSON summary until `wandb sync`); its strings are stored as is.
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for logged in [b"study-1",  # group
                   b"lora_alpha", b"json_fields",  # the resolved config
                   b"eval/loss", b"eval/json_fields", b"train/loss",  # metrics, named as transformers names them for W&B
                   b"dev_metric/best", b"train_tokens_per_s"]:  # the run record's summary
        assert logged in log, logged
    assert record.status == "COMPLETE"


def test_the_saved_adapter_loads_with_peft_as_usual(tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    run(compose_config(FAST, tmp_path / "run", tmp_path / "cache"))
    saved = tmp_path / "run" / "model"
    model = AutoPeftModelForCausalLM.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    ids = tokenizer("안녕하세요", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    assert model.peft_config["default"].r == 16


def test_qlora_on_cpu_keeps_gradients_through_4bit_weights_after_an_evaluation(tmp_path):
    """bitsandbytes repacks CPU 4-bit weights for inference after an eval-mode forward; QLoRA must not let it,
    or training after a dev evaluation loses the gradient through the frozen 4-bit layers."""
    import torch

    from sllmx.interfaces import Runtime

    cfg = compose_config([*FAST, "method=qlora"], tmp_path / "run", tmp_path / "cache")
    reg = registry()
    qlora = reg.get("method", "qlora")
    path = reg.get("model", "tiny").resolve(typed(cfg.model, "model"), str(tmp_path / "cache"))
    runtime = Runtime()
    method_cfg = typed(cfg.method, "method")  # what the runner hands the method plugin
    model = qlora.wrap(qlora.load_model(path, method_cfg, runtime), method_cfg, runtime)
    ids = torch.tensor([[1, 5, 9, 13, 2]])

    def input_gradient():
        model.train()
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        model(inputs_embeds=embeds).logits.sum().backward()
        return embeds.grad

    before = input_gradient()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what a dev evaluation does
    after = input_gradient()

    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    assert before.abs().sum() > 0 and torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float16"])
def test_qlora_keeps_the_bases_other_weights_in_their_dtype_but_float16(compute_dtype, tmp_path):
    """A QLoRA base loaded in bf16 keeps its norms, embeddings and head in bf16 (TRL's QLoRA preparation; the
    residual stream as in a LoRA run); loaded in fp16 they are upcast to fp32 (PEFT's
    prepare_model_for_kbit_training).  Only the adapter is trainable, fp32 after wrap (TRL's trainers then cast
    a quantised model's adapter to bf16)."""
    import torch

    from sllmx.interfaces import Runtime

    cfg = compose_config([*FAST, "method=qlora", f"method.bnb_4bit_compute_dtype={compute_dtype}"],
                         tmp_path / "run", tmp_path / "cache")
    reg = registry()
    qlora = reg.get("method", "qlora")
    path = reg.get("model", "tiny").resolve(typed(cfg.model, "model"), str(tmp_path / "cache"))
    method_cfg = typed(cfg.method, "method")
    model = qlora.wrap(qlora.load_model(path, method_cfg, Runtime()), method_cfg, Runtime())
    base = {n: p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.is_floating_point()}
    assert any("norm" in n for n in base) and any("embed_tokens" in n for n in base)
    want = torch.bfloat16 if compute_dtype == "bfloat16" else torch.float32
    assert set(base.values()) == {want}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}


def test_dpo_with_the_ipo_loss_trains(tmp_path):
    record = run(compose_config([*FAST, "trainer=dpo", "trainer.loss_type=[ipo]", "trainer.learning_rate=0.001"],
                                tmp_path / "run", tmp_path / "cache"))
    assert record.status == "COMPLETE" and record.config["trainer"]["loss_type"] == ["ipo"]
    assert record.dev_metric.history[-1]["value"] != record.dev_metric.baseline
