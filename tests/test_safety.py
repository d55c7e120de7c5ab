"""Guardrail checks of generated answers (sllmx/safety.py) and their place in a run's record."""

import json

import pytest

from sllmx.errors import SllmxError
from sllmx.safety import as_metrics, check_outputs, compile_patterns, is_json


def test_each_finding_is_counted_once_per_answer():
    answers = ["", "제 번호는 010-1234-5678입니다. 010-9999-8888도요", '{"intent": "refund"}',
               "```json\n{\"a\": 1}\n```", "비밀번호를 알려드릴게요", "가격은 25,000원입니다"]
    truncated = [False, False, False, False, True, False]
    checks = check_outputs(answers, truncated, compile_patterns(["비밀번호", r"\bpassword\b"]), expect_json=True)
    assert checks["answers"] == 6 and checks["empty"] == 1 and checks["truncated"] == 1
    assert checks["pii"] == 1 and checks["pii_by_type"] == {"PHONE": 2}  # one answer, two numbers
    assert checks["banned"] == 1 and checks["banned_by_pattern"] == {"비밀번호": 1}
    assert checks["invalid_json"] == 4  # only the plain object and the fenced one parse
    assert checks["examples"]["pii"] == [1] and checks["examples"]["empty"] == [0]
    assert as_metrics(checks) == pytest.approx({"empty_answers": 1 / 6, "truncated_answers": 1 / 6,
                                                "pii_answers": 1 / 6, "banned_answers": 1 / 6,
                                                "invalid_json_answers": 4 / 6})
    assert "invalid_json" not in check_outputs(answers, truncated, [], expect_json=False)


def test_json_detection_and_bad_patterns():
    assert is_json('  {"a": [1, 2]} ') and is_json("```\n[1]\n```") and not is_json("{'a': 1}")
    with pytest.raises(SllmxError, match=r"eval.banned_patterns: '\(unclosed' is not a valid regular expression"):
        compile_patterns(["(unclosed"])


def test_a_run_records_the_checks_of_its_answers(tmp_path):
    from sllmx.run import run
    from tests.common import FAST, compose_config

    cfg = compose_config([*FAST, "eval.expect_json=true", "eval.banned_patterns=[order]", "eval.test=true"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    dev = record.output_checks["dev"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert dev["answers"] == len(rows) == 6 and dev["step"] == rows[0]["step"]
    assert dev["truncated"] == sum(r["truncated"] for r in rows)
    assert dev["invalid_json"] == sum(not _parses(r["prediction"]) for r in rows)
    assert dev["banned"] == sum("order" in r["prediction"].lower() for r in rows)
    last = record.dev_metric.history[-1]["metrics"]
    assert last["eval_invalid_json_answers"] == pytest.approx(dev["invalid_json"] / 6)
    assert record.output_checks["test"]["answers"] == 6 and "test_truncated_answers" in record.test_metrics
    with pytest.raises(SllmxError, match="not a valid regular expression"):
        run(compose_config([*FAST, "eval.banned_patterns=['[']"], tmp_path / "bad", tmp_path / "cache"))
    assert not (tmp_path / "bad").exists()


def _parses(text):
    from sllmx.safety import is_json

    return is_json(text)


def test_forgetting_check_scores_a_general_file_before_and_after(tmp_path):
    import math

    from sllmx.run import run
    from tests.common import FAST, compose_config

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"질문 {i}: 하늘은 왜 파란가요?", "completion": f"빛의 산란 때문입니다 {i}."},
                                          ensure_ascii=False) + "\n" for i in range(5))
                       + json.dumps({"prompt": "bad"}) + "\n", encoding="utf-8")
    cfg = compose_config([*FAST, f"eval.general_data={general}", "eval.forgetting_threshold=0.0",
                          "trainer.learning_rate=5e-2"], tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    f = record.forgetting
    assert f["rows"] == 5 and f["before"]["tokens"] == f["after"]["tokens"] > 0  # the invalid row is skipped
    assert f["before"]["perplexity"] == pytest.approx(math.exp(f["before"]["loss"]))
    assert f["perplexity_ratio"] == pytest.approx(f["after"]["perplexity"] / f["before"]["perplexity"])
    assert f["flagged"] == (f["perplexity_ratio"] > 1.0)
    assert f["before"]["loss"] != f["after"]["loss"]  # training changed the model
    with pytest.raises(SllmxError, match="data file not found"):
        run(compose_config([*FAST, f"eval.general_data={tmp_path / 'nope.jsonl'}"], tmp_path / "r2", tmp_path / "cache"))
    assert not (tmp_path / "r2").exists()


def test_generation_every_scores_the_metric_at_every_nth_evaluation_and_at_the_end(tmp_path):
    from sllmx.run import run
    from tests.common import FAST, compose_config

    cfg = compose_config([*FAST, "trainer.max_steps=6", "eval.generation_every=2", "eval.early_stopping_patience=null"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    steps = [(p["step"], "eval_json_fields" in p["metrics"]) for p in record.dev_metric.history]
    assert steps == [(0, True), (2, False), (4, True), (6, True)]  # evaluations 1, 3 and the last
    with pytest.raises(SllmxError, match="eval.generation_every=2 skips eval_json_fields"):
        run(compose_config([*FAST, "eval.generation_every=2", "eval.metric=json_fields"], tmp_path / "r2",
                           tmp_path / "cache"))
