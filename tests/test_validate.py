"""Config validation (sllmx.validate): every option outside its declared range is refused in one line,
``sllmx: error: <option>=<value>: <allowed range>``, exit status 2, before torch is imported and before
anything is written; the values at each boundary pass; dict options take ``key={a: b}`` overrides.

The command-line cases run ``python -m sllmx`` as a user does; the rest go through the validator in-process
(a composed config, no subprocess), which is what ``run()`` calls first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import pytest
from omegaconf import OmegaConf

from sllmx.config import LR_SCHEDULER_TYPES, MethodConfig, TrainerConfig, option
from sllmx.errors import SllmxError
from sllmx.validate import annotated_yaml, config_nodes, validate_config
from tests.common import ROOT, compose_config

BASE = ["model=tiny", "logger=none"]
#: what Hydra itself puts in a run folder before the app runs
HYDRA_FILES = {".hydra", "sllmx.log"}


def sllmx(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sllmx", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sllmx: error: ")]


def refusal(overrides: list[str], tmp_path) -> str:
    """The message the validator gives for ``overrides`` (composed in-process), or "" when they pass."""
    cfg = compose_config([*BASE, *overrides], tmp_path / "out", tmp_path / "cache")
    try:
        validate_config(cfg)
    except SllmxError as exc:
        return str(exc)
    return ""


# ----------------------------------------------------------------------------- the command line

CLI_CASES = [  # the values issue 15 found accepted (or refused only later, with a traceback)
    (["method.r=0"], "method.r=0: must be >= 1"),
    (["trainer.learning_rate=-1"], "trainer.learning_rate=-1.0: must be > 0"),
    (["trainer.max_length=1"], "trainer.max_length=1: must be >= 2, or null"),
    (["trainer.num_train_epochs=0"],
     "trainer.num_train_epochs=0.0: must be > 0 unless trainer.max_steps > 0 (nothing would be trained)"),
    (["data.dev_fraction=1.5"], "data.dev_fraction=1.5: must be in [0, 1)"),
    (["data.dev_fraction=0.6", "data.test_fraction=0.4"],
     "data.dev_fraction=0.6 with data.test_fraction=0.4: their sum must be < 1 (the rest is train)"),
    (["trainer=dpo", "trainer.loss_type=[ipo,simpo]"],
     "trainer.loss_type=[ipo, simpo]: each item: use one of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, "
     "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm"),
    (["trainer.args={resume_from_checkpoint: true}"],
     "trainer.args.resume_from_checkpoint=True: not an option here; resuming is done with resume=auto "
     "(or resume=<run folder>)"),
]


@pytest.mark.parametrize("overrides,line", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_value_is_one_line_exit_2_nothing_written(overrides, line, tmp_path):
    run_dir = tmp_path / "run"
    proc = sllmx(*BASE, *overrides, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [f"sllmx: error: {line}"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "run.json").exists()
    assert set(os.listdir(run_dir)) <= HYDRA_FILES  # nothing of sllmx's own in the run folder
    assert not (tmp_path / "cache").exists()  # no model built, no data cached


def test_bad_value_is_refused_before_torch_is_imported(tmp_path):
    code = ("import sys, runpy\n"
            f"sys.argv = ['sllmx', 'model=tiny', 'logger=none', 'method.r=0', 'hydra.run.dir={tmp_path}']\n"
            "try:\n    runpy.run_module('sllmx', run_name='__main__')\nexcept SystemExit as exc:\n"
            "    assert exc.code == 2, exc.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules)\n"
            "assert not heavy, f'imported before the config was checked: {heavy}'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sllmx: error: method.r=0: must be >= 1" in proc.stderr


def test_every_sweep_trial_is_validated(tmp_path):
    proc = sllmx("--multirun", *BASE, "method.r=0,-4", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode != 0
    assert "method.r=0: must be >= 1" in proc.stderr
    assert not list((tmp_path / "sweep").rglob("run.json"))


def test_validator_itself_imports_no_heavy_library(tmp_path):
    code = ("import sys\nfrom pathlib import Path\nfrom tests.common import compose_config\n"
            "from sllmx.validate import validate_config\n"
            f"validate_config(compose_config(['model=tiny', 'trainer=dpo'], Path({str(tmp_path)!r}), "
            f"Path({str(tmp_path)!r})))\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- in-process: each rule

BAD = [
    (["trainer.per_device_train_batch_size=0"], "trainer.per_device_train_batch_size=0: must be >= 1"),
    (["method.bias=some"], "method.bias=some: use one of none, all, lora_only"),
    (["trainer=dpo", "trainer.beta=0"], "trainer.beta=0.0: must be > 0"),
    (["trainer.precision=fp8"], "trainer.precision=fp8: use one of auto, fp32, bf16, fp16"),
    (["method.lora_alpha=0"], "method.lora_alpha=0: must be > 0"),
    (["method.lora_dropout=1"], "method.lora_dropout=1.0: must be in [0, 1)"),
    (["method=dora", "method.r=-1"], "method.r=-1: must be >= 1"),
    (["method=qlora", "method.bnb_4bit_quant_type=int4"], "method.bnb_4bit_quant_type=int4: use one of nf4, fp4"),
    (["method=qlora", "method.bnb_4bit_compute_dtype=int8"],
     "method.bnb_4bit_compute_dtype=int8: use one of bfloat16, float16, float32, or null"),
    (["method=prompt_tuning", "method.num_virtual_tokens=0"], "method.num_virtual_tokens=0: must be >= 1"),
    (["method=prompt_tuning", "method.prompt_tuning_init=text"],
     "method.prompt_tuning_init=text: use one of RANDOM, TEXT, SAMPLE_VOCAB"),
    (["method=prompt_tuning", "method.prompt_tuning_init=TEXT"],
     "method.prompt_tuning_init=TEXT needs method.prompt_tuning_init_text (the text to start from)"),
    (["trainer.learning_rate=0"], "trainer.learning_rate=0.0: must be > 0"),
    (["trainer.learning_rate=nan"], "trainer.learning_rate=nan: must be finite and > 0"),
    (["trainer=orpo", "trainer.learning_rate=0"], "trainer.learning_rate=0.0: must be > 0"),  # inherited range
    (["trainer.num_train_epochs=-1", "trainer.max_steps=10"], "trainer.num_train_epochs=-1.0: must be >= 0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be -1 (train for trainer.num_train_epochs) or >= 1"),
    (["trainer.max_steps=-2"], "trainer.max_steps=-2: must be >= -1"),
    (["trainer.per_device_eval_batch_size=0"], "trainer.per_device_eval_batch_size=0: must be >= 1"),
    (["trainer.gradient_accumulation_steps=0"], "trainer.gradient_accumulation_steps=0: must be >= 1"),
    (["trainer.warmup_ratio=1"], "trainer.warmup_ratio=1.0: must be in [0, 1)"),
    (["trainer.warmup_ratio=-0.1"], "trainer.warmup_ratio=-0.1: must be in [0, 1)"),
    (["trainer.weight_decay=-0.01"], "trainer.weight_decay=-0.01: must be >= 0"),
    (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm=-1.0: must be >= 0"),
    (["trainer.logging_steps=0"], "trainer.logging_steps=0: must be >= 1"),
    (["trainer.lr_scheduler_type=cosine_annealing"],
     "trainer.lr_scheduler_type=cosine_annealing: use one of " + ", ".join(LR_SCHEDULER_TYPES)),
    (["trainer.train_sampling_strategy=shuffle"],
     "trainer.train_sampling_strategy=shuffle: use one of random, sequential, group_by_length, batch_rebalance"),
    (["trainer=dpo", "trainer.loss_type=[]"], "trainer.loss_type=[]: name at least one loss, e.g. [sigmoid]"),
    (["trainer=orpo", "trainer.beta=-0.1"], "trainer.beta=-0.1: must be > 0"),
    (["trainer=kto", "trainer.beta=0"], "trainer.beta=0.0: must be > 0"),
    (["trainer=kto", "trainer.desirable_weight=-1"], "trainer.desirable_weight=-1.0: must be >= 0"),
    (["data.test_fraction=-0.1"], "data.test_fraction=-0.1: must be in [0, 1)"),
    (["data.max_dev_rows=0"], "data.max_dev_rows=0: must be >= 1, or null"),
    (["data.near_dup_threshold=0"], "data.near_dup_threshold=0.0: must be in (0, 1], or null"),
    (["data.duplicates=remove"], "data.duplicates=remove: use one of drop, report, off"),
    (["data.leakage=warn"], "data.leakage=warn: use one of error, drop, report, off"),
    (["data.pii=redact"], "data.pii=redact: use one of mask, drop, report, off"),
    (["data.format=chatml"], "data.format=chatml: use one of auto, alpaca, hh_rlhf, kto, kto_messages, messages, "
                             "preference, prompt_completion, sharegpt_preference, summarization, text"),
    (["data.metric=accuracy"], "data.metric=accuracy: use one of bleu, exact_match, json_fields, perplexity, "
                               "preference, rouge, or null"),
    (["data.n_train=0"], "data.n_train=0: must be >= 1"),
    (["data=files", "data.path=x.jsonl", "data.max_rows=0"], "data.max_rows=0: must be >= 1, or null"),
    (["eval.eval_steps=0"], "eval.eval_steps=0: must be >= 1"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0: must be >= 1"),
    (["eval.early_stopping_patience=0"], "eval.early_stopping_patience=0: must be >= 1, or null"),
    (["eval.early_stopping_threshold=-0.5"], "eval.early_stopping_threshold=-0.5: must be >= 0"),
    (["eval.generation_every=0"], "eval.generation_every=0: must be >= 1"),
    (["logger.mode=online_sync"], "logger.mode=online_sync: use one of online, offline, disabled, shared, or null"),
    (["logger.name=mlflow"], "logger.name=mlflow: use one of none, wandb"),
    (["seed=-1"], "seed=-1: must be in [0, 4294967295]"),
    (["seed=4294967296"], "seed=4294967296: must be in [0, 4294967295]"),
    (["model.hidden_size=66"], "model.hidden_size=66: must be a multiple of model.num_attention_heads=4"),
    (["model.num_key_value_heads=3"],
     "model.num_attention_heads=4: must be a multiple of model.num_key_value_heads=3"),
    (["model=gguf", "model.chat_template=llama3"], "model.chat_template=llama3: use one of chatml, gemma, or null"),
]


@pytest.mark.parametrize("overrides,line", BAD, ids=[" ".join(c[0]) for c in BAD])
def test_bad_value_in_process(overrides, line, tmp_path):
    assert refusal(overrides, tmp_path) == line


GOOD = [  # the values at each boundary, several per composition
    ["method.r=1", "method.lora_alpha=1", "method.lora_dropout=0", "method.bias=lora_only"],
    ["method.lora_dropout=0.999", "method.bias=all"],
    ["method=prompt_tuning", "method.num_virtual_tokens=1", "method.prompt_tuning_init=TEXT",
     "method.prompt_tuning_init_text=Reply in JSON"],
    ["method=qlora", "method.bnb_4bit_quant_type=fp4", "method.bnb_4bit_compute_dtype=float32"],
    ["trainer.learning_rate=1e-12", "trainer.max_length=2", "trainer.warmup_ratio=0.999", "trainer.weight_decay=0",
     "trainer.max_grad_norm=0", "trainer.logging_steps=1", "trainer.per_device_train_batch_size=1",
     "trainer.per_device_eval_batch_size=1", "trainer.gradient_accumulation_steps=1", "trainer.precision=fp16"],
    ["trainer.max_length=null", "trainer.num_train_epochs=0.01", "trainer.lr_scheduler_type=cosine_with_min_lr",
     "trainer.train_sampling_strategy=random"],
    ["trainer.num_train_epochs=0", "trainer.max_steps=1"],  # steps decide, the epochs are unused
    ["trainer=dpo", "trainer.beta=1e-6", "trainer.loss_type=[sigmoid,bco_pair,sft]"],
    ["trainer=kto", "trainer.beta=0.01", "trainer.desirable_weight=0", "trainer.undesirable_weight=0"],
    ["trainer=orpo", "trainer.beta=10"],
    ["trainer.args={save_total_limit: 2, resume_from_checkpoint_x: 1}"],  # only the exact key is refused
    ["data.dev_fraction=0", "data.test_fraction=0.999"],
    ["data.dev_fraction=0.5", "data.test_fraction=0.49", "data.max_dev_rows=1", "data.near_dup_threshold=1"],
    ["data.near_dup_threshold=null", "data.max_dev_rows=null", "data.duplicates=off", "data.leakage=drop",
     "data.pii=mask", "data.format=auto", "data.metric=null", "data.n_test=0", "data.n_dev=1"],
    ["data=files", "data.path=x.jsonl", "data.format=alpaca", "data.max_rows=1", "data.sample_seed=0"],
    ["eval.eval_steps=1", "eval.max_new_tokens=1", "eval.early_stopping_patience=1",
     "eval.early_stopping_threshold=0", "eval.generation_every=1"],
    ["eval.early_stopping_patience=null", "logger.mode=disabled", "logger.name=none", "seed=0"],
    ["seed=4294967295", "trial.number=0", "model.hidden_size=8", "model.num_attention_heads=2",
     "model.num_key_value_heads=1"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(g) for g in GOOD])
def test_values_at_the_boundaries_pass(overrides, tmp_path):
    assert refusal(overrides, tmp_path) == ""


def test_every_default_config_passes(tmp_path):
    for group, options in {"method": ["lora", "dora", "qlora", "prompt_tuning", "full"],
                           "trainer": ["sft", "dpo", "orpo", "kto"],
                           "model": ["tiny", "smollm2-135m", "gemma3-270m"],
                           "data": ["support_ko", "ko_chatbot", "dialogsum", "hh_rlhf", "alpaca_en_demo",
                                    "dpo_en_demo", "kto_en_demo"]}.items():
        for name in options:
            assert refusal([f"{group}={name}"], tmp_path) == "", (group, name)


# ----------------------------------------------------------------------------- dict options on the command line

def test_column_mapping_as_the_readme_writes_it(tmp_path):
    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"Q": f"question {i}?", "A": f"answer {i}"}, ensure_ascii=False) + "\n"
                            for i in range(20)))
    proc = sllmx(*BASE, "data=files", f"data.path={rows}", "data.columns={prompt: Q, completion: A}",
                 "trainer.args={save_total_limit: 2, eval_accumulation_steps: 4}", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.data.columns == {"prompt": "Q", "completion": "A"}
    assert cfg.trainer.args == {"save_total_limit": 2, "eval_accumulation_steps": 4}

    # ... and the mapped rows load (in-process)
    from sllmx.data.pipeline import load_splits
    from sllmx.interfaces import LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT
    from sllmx.plugins import registry

    cfg = compose_config([*BASE, "data=files", f"data.path={rows}", "data.columns={prompt: Q, completion: A}",
                          "data.checks=false"], tmp_path / "out", tmp_path / "cache")
    validate_config(cfg)
    sft = SimpleNamespace(name="sft", layouts=[LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT])
    splits = load_splits(cfg.data, registry(), sft)
    assert splits.format == "prompt_completion" and len(splits.train) + len(splits.dev) == 20


def test_dict_overrides_merge_with_a_presets_mapping_and_plus_still_adds(tmp_path):
    cfg = compose_config([*BASE, "data=ko_chatbot", "data.columns={system: S}", "+trainer.args.seed_x=1",
                          "trainer.args={save_total_limit: 1}"], tmp_path / "out", tmp_path / "cache")
    assert dict(cfg.data.columns) == {"prompt": "Q", "completion": "A", "system": "S"}
    assert dict(cfg.trainer.args) == {"seed_x": 1, "save_total_limit": 1}
    with pytest.raises(Exception, match="rank"):  # other keys stay checked: a typo fails at composition
        compose_config([*BASE, "method.rank=8"], tmp_path / "out", tmp_path / "cache")


def test_dict_fields_take_new_keys_in_python_too():
    from sllmx_plugins.files import FilesDataConfig

    assert dict(FilesDataConfig().columns) == {} and dict(TrainerConfig(name="x").args) == {}
    assert FilesDataConfig().columns is not FilesDataConfig().columns  # a fresh mapping per instance


# ----------------------------------------------------------------------------- plugins' configs, --help

def test_a_plugin_config_declares_ranges_in_metadata_and_rules_in_check():
    @dataclass
    class WindowConfig(MethodConfig):
        name: str = "window"
        width: int = field(default=8, metadata={"help": "window width", "ge": 2, "le": 64})
        mode: Optional[str] = option("sliding or fixed", None, choices=("sliding", "fixed"))
        stride: int = option("step between windows", 4, gt=0)

        def check(self, key: str) -> Optional[str]:
            return f"{key}.stride={self.stride}: must not exceed {key}.width" if self.stride > self.width else None

    def line(**values):
        try:
            validate_config(OmegaConf.create({"method": OmegaConf.merge(OmegaConf.structured(WindowConfig), values)}))
        except SllmxError as exc:
            return str(exc)
        return ""

    assert line() == ""
    assert line(width=1) == "method.width=1: must be in [2, 64]"
    assert line(mode="tumbling") == "method.mode=tumbling: use one of sliding, fixed, or null"
    assert line(stride=0) == "method.stride=0: must be > 0"
    assert line(stride=16) == "method.stride=16: must not exceed method.width"
    assert line(width=64, stride=16, mode="fixed") == ""


def test_a_broken_check_is_reported_with_its_class():
    @dataclass
    class Broken(MethodConfig):
        name: str = "broken"

        def check(self, key):
            return 1 / 0

    with pytest.raises(SllmxError, match=r"method: .*Broken.check failed: ZeroDivisionError"):
        validate_config(OmegaConf.create({"method": OmegaConf.structured(Broken)}))


def test_help_shows_each_options_range():
    proc = sllmx("--help")
    assert proc.returncode == 0, proc.stderr
    for line in ["  r: 16  # >= 1", "  lora_dropout: 0.0  # in [0, 1)", "  bias: none  # one of none, all, lora_only",
                 "  precision: auto  # one of auto, fp32, bf16, fp16", "  max_length: 512  # >= 2, or null",
                 "  dev_fraction: 0.1  # in [0, 1)", "  early_stopping_patience: 3  # >= 1, or null",
                 "output_dir: ${hydra:runtime.output_dir}", "  columns: {}",
                 # each option's help text (metadata={"help": ...}) above it, a resolver's value beside it
                 "  # rank of the update matrices", "  learning_rate: ${sllmx_learning_rate:${oc.select:method.name,null},sft,2e-4}"
                                            "  # > 0 (now 0.001)"]:
        assert line + "\n" in proc.stdout, line


def test_annotated_yaml_is_the_config_hydra_prints(tmp_path):
    cfg = compose_config([*BASE, "trainer=dpo"], tmp_path / "out", tmp_path / "cache")
    text = annotated_yaml(cfg)
    assert OmegaConf.create(re.sub(r"  # .*$", "", text, flags=re.M)) == OmegaConf.create(OmegaConf.to_yaml(cfg))
    keys = {key for key, _, _ in config_nodes(cfg)}
    assert keys == {"", "model", "data", "method", "trainer", "logger", "eval", "trial"}


# ----------------------------------------------------------------------------- the choices match the libraries

def test_choices_are_the_libraries_own():
    import inspect

    from transformers import TrainingArguments
    from transformers.trainer_utils import SchedulerType
    from trl import DPOTrainer

    from sllmx.data import checks, pipeline
    from sllmx_plugins.methods import LoraMethodConfig, PromptTuningMethodConfig
    from sllmx.chat_templates import CHAT_TEMPLATES
    from sllmx_plugins.gguf_model import GGUFModelConfig
    from sllmx_plugins.trainers import DPOTrainerConfig, SFTTrainerConfig

    def choices(cls, name):
        return set(cls.__dataclass_fields__[name].metadata["choices"])

    assert set(LR_SCHEDULER_TYPES) == {s.value for s in SchedulerType}
    handled = set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(DPOTrainer)))
    assert choices(DPOTrainerConfig, "loss_type") == handled
    from trl.experimental.cpo import CPOConfig

    from sllmx_plugins.trainers import CPOTrainerConfig

    cpo = {f.name: f for f in dataclasses.fields(CPOConfig)}["loss_type"].metadata["choices"]
    assert choices(CPOTrainerConfig, "loss_type") == set(cpo) - {"alphapo"}  # AlphaPO is TRL's alpha != 0 instead
    sampling = {f.name: f for f in dataclasses.fields(TrainingArguments)}["train_sampling_strategy"]
    assert choices(SFTTrainerConfig, "train_sampling_strategy") == set(sampling.metadata["choices"])
    from peft import PromptTuningInit
    from peft.tuners.lora import LoraConfig

    assert choices(PromptTuningMethodConfig, "prompt_tuning_init") == {m.value for m in PromptTuningInit}
    assert choices(LoraMethodConfig, "bias") == set(typing_args(LoraConfig.__dataclass_fields__["bias"].type))
    assert choices(GGUFModelConfig, "chat_template") == set(CHAT_TEMPLATES)
    from sllmx.config import DataConfig

    handled = inspect.getsource(checks) + inspect.getsource(pipeline)
    for key in ("duplicates", "leakage", "pii"):  # every choice the config allows is one the checks act on
        for value in choices(DataConfig, key):
            assert f'opts.{key} == "{value}"' in handled or f'opts.{key} != "{value}"' in handled \
                or value == "report", (key, value)


def typing_args(tp) -> tuple:
    """The values of a ``Literal[...]`` annotation (written as a string or not)."""
    import typing

    if isinstance(tp, str):
        return tuple(re.findall(r"""["']([^"']+)["']""", tp))
    return typing.get_args(tp)
