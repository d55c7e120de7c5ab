"""The built-in support_ko task (plugins/support_task.py): generator, data source and json_fields metric."""

import dataclasses
import json

import pytest

from sllmx.interfaces import RawSplit
from sllmx_plugins.support_task import (INTENTS, KEYS, JsonFieldsMetric, SupportTaskConfig, SupportTaskSource,
                                        first_json_object, generate)


def _user(row):
    (msg,) = row["prompt"]
    assert msg["role"] == "user"
    return msg["content"]


def _answer(row, key):
    (msg,) = row[key]
    assert msg["role"] == "assistant"
    return json.loads(msg["content"])


@pytest.fixture(scope="module")
def splits():
    return SupportTaskSource().load(SupportTaskConfig())


def test_config_fields_and_defaults():
    for f in dataclasses.fields(SupportTaskConfig):
        assert f.metadata.get("help"), f"SupportTaskConfig.{f.name} has no help"
    cfg = SupportTaskConfig()
    assert (cfg.source, cfg.format, cfg.metric, cfg.seed) == ("support_ko", "preference", "json_fields", 0)
    assert (cfg.n_train, cfg.n_dev, cfg.n_test) == (256, 32, 64)
    assert all(k in cfg.system for k in KEYS) and all(i in cfg.system for i in INTENTS)


def test_registered_and_composes():
    from hydra import compose, initialize_config_module

    from sllmx.plugins import register_configs, registry

    reg = registry()
    assert isinstance(reg.get("data", "support_ko"), SupportTaskSource)
    assert isinstance(reg.get("metric", "json_fields"), JsonFieldsMetric)
    register_configs(reg)
    with initialize_config_module("sllmx.conf", version_base="1.3"):
        data = compose(config_name=None, overrides=["+data=support_ko", "data.n_train=8"]).data
    assert (data.source, data.format, data.metric, data.n_train, data.n_dev) == ("support_ko", "preference",
                                                                                  "json_fields", 8, 32)
    rows = SupportTaskSource().load(data)
    assert [len(rows[s].rows) for s in ("train", "dev", "test")] == [8, 32, 64]


def test_load_shapes(splits):
    assert set(splits) == {"train", "dev", "test"}
    assert [len(splits[s].rows) for s in ("train", "dev", "test")] == [256, 32, 64]
    assert all(isinstance(s, RawSplit) for s in splits.values())
    assert splits["dev"].origin == "support_ko(seed=0)/dev"
    small = SupportTaskSource().load(SupportTaskConfig(n_train=5, n_dev=2, n_test=0))
    assert [len(small[s].rows) for s in ("train", "dev", "test")] == [5, 2, 0]


def test_seeded_determinism():
    assert generate(40, 8, 8, seed=0) == generate(40, 8, 8, seed=0)
    assert generate(40, 8, 8, seed=0)["train"] != generate(40, 8, 8, seed=1)["train"]
    # dev and test do not move when the train size changes
    a, b = generate(40, 8, 8, seed=3), generate(100, 8, 8, seed=3)
    assert a["dev"] == b["dev"] and a["test"] == b["test"]


def test_splits_share_no_user_message(splits):
    msgs = {s: [_user(r) for r in splits[s].rows] for s in splits}
    for s, m in msgs.items():
        assert len(set(m)) == len(m), f"duplicate message within {s}"
    assert not set(msgs["train"]) & set(msgs["dev"])
    assert not set(msgs["train"]) & set(msgs["test"])
    assert not set(msgs["dev"]) & set(msgs["test"])
    big = generate(2000, 200, 200, seed=7)
    allm = [_user(r) for rows in big.values() for r in rows]
    assert len(set(allm)) == len(allm) == 2400


def test_answers_are_json_with_the_keys_and_match_the_message(splits):
    for split in splits.values():
        for row in split.rows:
            text, content = _user(row), row["chosen"][0]["content"]
            answer = json.loads(content)
            assert tuple(answer) == KEYS
            assert answer["intent"] in INTENTS
            assert answer["order_id"] in text and answer["product"] in text
            assert isinstance(answer["quantity"], int) and f"{answer['quantity']}개" in text
            assert content == json.dumps(answer, ensure_ascii=False)  # compact, Korean not escaped


def test_rejected_is_one_plausible_field_off(splits):
    changed = set()
    for split in splits.values():
        for row in split.rows:
            good, bad = _answer(row, "chosen"), _answer(row, "rejected")
            assert tuple(bad) == KEYS and bad != good
            diff = [k for k in KEYS if good[k] != bad[k]]
            assert len(diff) == 1
            changed.add(diff[0])
            assert bad["intent"] in INTENTS and isinstance(bad["quantity"], int) and bad["quantity"] >= 1
            if diff == ["order_id"]:
                assert len(bad["order_id"]) == len(good["order_id"]) and bad["order_id"][0] == good["order_id"][0]
    assert changed == set(KEYS)


def test_intents_are_balanced(splits):
    counts = {}
    for row in splits["train"].rows:
        intent = _answer(row, "chosen")["intent"]
        counts[intent] = counts.get(intent, 0) + 1
    assert set(counts) == set(INTENTS)
    assert max(counts.values()) - min(counts.values()) <= 1


# --- json_fields ----------------------------------------------------------------------

REF = '{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2}'


def test_metric_identical_is_perfect():
    m = JsonFieldsMetric()
    assert m.higher_is_better and m.name == "json_fields"
    assert set(m.keys) == {"json_fields", "json_exact", "json_valid"}
    assert m.compute([REF, REF], [REF, REF]) == {"json_fields": 1.0, "json_exact": 1.0, "json_valid": 1.0}


def test_metric_partial_by_hand():
    preds = [
        # 3 of 4 right (quantity wrong); text and a code fence around the object are ignored
        'Sure: ```json\n{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 3}\n```',
        # 2 of 4: order_id wrong, quantity missing
        '{"intent": "refund", "order_id": "A12346", "product": "무선 이어폰"}',
        # not JSON at all: 0 of 4, not valid
        "환불 요청입니다",
        # all right but an extra key: 4 of 4, valid, not exact
        '{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2, "note": "x"}',
    ]
    out = JsonFieldsMetric().compute(preds, [REF] * 4)
    assert out["json_fields"] == pytest.approx((3 / 4 + 2 / 4 + 0 + 4 / 4) / 4)  # 0.5625
    assert out["json_exact"] == 0.0
    assert out["json_valid"] == pytest.approx(3 / 4)


def test_metric_invalid_and_type_strict():
    ref = '{"a": 1, "b": "x"}'
    assert JsonFieldsMetric().compute(['{"a": 1, "b": "x"'], [ref]) == {
        "json_fields": 0.0, "json_exact": 0.0, "json_valid": 0.0}  # unterminated object
    out = JsonFieldsMetric().compute(['{"a": "1", "b": "x"}', '{"a": true, "b": "x"}', '{"a": 1.0, "b": "x"}'],
                                     [ref] * 3)
    assert out["json_fields"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert out["json_exact"] == pytest.approx(1 / 3)
    assert JsonFieldsMetric().compute([], []) == {"json_fields": 0.0, "json_exact": 0.0, "json_valid": 0.0}
    with pytest.raises(ValueError):
        JsonFieldsMetric().compute(["{}"], [])


def test_first_json_object():
    assert first_json_object('x {bad} then {"k": [1, {"n": 2}]} and {"z": 0}') == {"k": [1, {"n": 2}]}
    assert first_json_object("[1, 2]") is None
    assert first_json_object("no braces") is None
    assert first_json_object([{"role": "assistant", "content": '{"k": 1}'}]) == {"k": 1}


def test_generated_answers_score_perfectly(splits):
    rows = splits["dev"].rows
    refs = [r["chosen"][0]["content"] for r in rows]
    bad = [r["rejected"][0]["content"] for r in rows]
    assert JsonFieldsMetric().compute(refs, refs)["json_exact"] == 1.0
    out = JsonFieldsMetric().compute(bad, refs)
    assert out == {"json_fields": 0.75, "json_exact": 0.0, "json_valid": 1.0}
