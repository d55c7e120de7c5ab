"""GRPO with reward plugins (issue 19): the reward hook, TRL's reward functions, a run, its refusals."""

import pytest

from sllmx.errors import SllmxError
from sllmx.interfaces import Reward
from sllmx.run import run
from tests.common import FAST, compose_config

#: a GRPO run of the tiny model: 2 steps of 2 prompts x 4 completions of 12 tokens
GRPO = [*FAST, "trainer=grpo", "trainer.per_device_train_batch_size=8", "trainer.per_device_eval_batch_size=8",
        "trainer.max_completion_length=12", "eval.max_new_tokens=12"]


class Distinct(Reward):
    """The number of distinct characters of a completion / 10: varies between samples of a random model."""

    name = "distinct_chars"

    def score(self, completions, references, prompts):
        return [len(set(c)) / 10 for c in completions]


class Longer(Reward):
    """The completion's length, lower is better (to check the sign TRL gets)."""

    name = "length"
    higher_is_better = False
    reads = ("completion", "reference")

    def score(self, completions, references, prompts):
        assert len(references) == len(completions)
        return [float(len(c)) for c in completions]


@pytest.fixture()
def with_test_rewards(monkeypatch):
    """The process registry with two more reward plugins, as a third party's distribution would add them."""
    import sllmx.plugins as plugins
    from sllmx import hookimpl

    class TestRewards:
        @hookimpl
        def sllmx_rewards(self):
            return [Distinct(), Longer()]

    reg = plugins.registry()
    reg.pm.register(TestRewards(), name="test-rewards")
    fresh = plugins.Registry(reg.pm, reg.dists)
    reg.pm.unregister(name="test-rewards")
    monkeypatch.setattr(plugins, "registry", lambda: fresh)
    return fresh


def test_the_built_in_task_registers_its_checkable_rewards():
    from sllmx.plugins import registry

    reg = registry()
    valid, fields = reg.get("reward", "json_valid"), reg.get("reward", "json_fields")
    ref = '{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2}'
    answers = ['```json\n{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 3}\n```',
               "환불해 드리겠습니다", '{"intent": "exchange"}']
    assert valid.score(answers, None, [None] * 3) == [1.0, 0.0, 1.0]
    assert fields.score(answers, [ref] * 3, [None] * 3) == [0.75, 0.0, 0.0]
    assert fields.reads == ("completion", "reference") and valid.higher_is_better and fields.higher_is_better


def test_reward_functions_are_named_signed_and_read_chat_completions(with_test_rewards):
    from sllmx_plugins.trainers import reward_functions

    funcs, weights = reward_functions(["distinct_chars", "length"], [2.0, 0.5])
    assert [f.__name__ for f in funcs] == ["distinct_chars", "length"] and weights == [2.0, -0.5]
    chat = [[{"role": "assistant", "content": "abcab"}], [{"role": "assistant", "content": "zz"}]]
    assert funcs[0](prompts=["p", "p"], completions=chat, reference=["r", "r"]) == [0.3, 0.1]
    assert funcs[1](prompts=["p", "p"], completions=chat, reference=["r", "r"]) == [5.0, 2.0]
    with pytest.raises(SllmxError, match="unknown reward 'nope'; available: distinct_chars, json_fields"):
        reward_functions(["nope"])


def test_grpo_trains_the_adapter_towards_its_reward(with_test_rewards, tmp_path):
    """Completions of a random model differ in the reward, so the group advantages are not all zero and the
    LoRA weights move from their start (B = 0); the record carries eval_reward and each reward's mean."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    record = run(compose_config([*GRPO, "trainer.rewards=[distinct_chars,json_valid]", "trainer.learning_rate=0.01",
                                 "trainer.max_steps=2", "eval.eval_steps=2"], out, tmp_path / "cache"))
    assert record.status == "COMPLETE" and record.dev_metric.name == "eval_reward"
    assert record.dev_metric.higher_is_better and record.dev_metric.baseline > 0
    last = record.dev_metric.history[-1]["metrics"]
    assert {"eval_rewards/distinct_chars/mean", "eval_rewards/json_valid/mean", "eval_json_fields"} <= set(last)
    assert record.train_tokens > 2 * 2 * 4  # prompts and generated completions, counted by TRL
    weights = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)
    assert record.defaults == {}  # an explicit learning rate


@pytest.mark.parametrize("overrides,words", [
    (["trainer.rewards=[]"], ["trainer.rewards is empty", "json_valid"]),
    (["trainer.rewards=[nope]"], ["trainer.rewards=[nope]", "json_fields, json_valid"]),
    (["trainer.rewards=[json_valid]", "trainer.num_generations=3"], ["not a multiple of trainer.num_generations=3"]),
    (["trainer.rewards=[json_valid,json_fields]", "trainer.reward_weights=[1]"], ["1 values for 2 rewards"]),
    (["trainer.rewards=[json_valid]", "method=lora", "method.init_lora_weights=pissa"], ["pissa", "grpo"]),
    (["trainer.rewards=[json_valid]", "trainer.max_length=256"], ["trainer.max_length=256", "max_completion_length"]),
])
def test_grpo_refuses_configs_that_cannot_work_before_loading(tmp_path, overrides, words):
    with pytest.raises(SllmxError) as err:
        run(compose_config([*GRPO, *overrides], tmp_path / "run", tmp_path / "cache"))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["qlora", "dora", "prompt_tuning", "full"])
def test_grpo_trains_with_each_method(with_test_rewards, method, tmp_path):
    lr = "trainer.learning_rate=0.05" if method == "prompt_tuning" else "trainer.learning_rate=0.001"
    record = run(compose_config([*GRPO, f"method={method}", "trainer.rewards=[distinct_chars]", lr,
                                 "trainer.max_steps=2", "eval.eval_steps=2"], tmp_path / "run", tmp_path / "cache"))
    assert record.status == "COMPLETE" and record.global_steps == 2
    assert [h["step"] for h in record.dev_metric.history] == [0, 2]
    assert record.dev_metric.history[-1]["metrics"]["eval_reward"] > 0


def test_the_console_leaves_out_grpos_per_step_statistics_but_not_rewards_or_dpos_accuracies():
    from sllmx.progress import evaluation_line
    from sllmx.records import DevMetric

    line = evaluation_line(2, 4, {"eval_reward": 0.5, "eval_rewards/json_valid/mean": 0.75,
                                  "eval_rewards/json_valid/std": 0.1, "eval_clip_ratio/low_min": 0.0,
                                  "eval_completions/max_length": 12, "eval_rewards/accuracies": 0.625},
                           DevMetric(name="eval_reward", higher_is_better=True))
    assert "eval_rewards/json_valid/mean 0.75" in line and "eval_rewards/accuracies 0.625" in line
    assert "std" not in line and "clip_ratio" not in line and "completions/" not in line


def test_a_reward_that_cannot_score_the_datas_references_stops_before_generating(tmp_path):
    """json_fields on answers that are not JSON: one line naming the reward, the split and the answer."""
    import json

    rows = [{"prompt": f"Say {i}.", "completion": f"number {i}"} for i in range(30)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SllmxError) as err:
        run(compose_config([*[o for o in GRPO if not o.startswith("data")], "data=files",
                            f"data.path={tmp_path / 'train.jsonl'}", "trainer.rewards=[json_valid,json_fields]"],
                           tmp_path / "run", tmp_path / "cache"))
    assert "json_fields on the train split: reference answer" in str(err.value) and "not a JSON object" in str(err.value)
