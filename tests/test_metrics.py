"""Built-in generation metrics (plugins/metrics.py): Korean-aware ROUGE, sacreBLEU/chrF, exact match,
and the summarization format with the dialogsum preset."""

import json

import pytest
from rouge_score.rouge_scorer import RougeScorer

from sllmx.plugins import typed
from sllmx.plugins import registry
from sllmx_plugins.metrics import BleuMetric, ExactMatchMetric, RougeMetric, RougeTokenizer
from tests.common import SHARED_DATA

REF = "고객이 환불을 요청했다."


def test_rouge_scores_korean_where_rouge_scores_default_tokenizer_gives_zero():
    default = RougeScorer(["rouge1", "rouge2", "rougeL"]).score(REF, "고객이 교환을 요청했다.")
    assert all(s.fmeasure == 0 for s in default.values())  # Hangul is dropped: both sides are empty
    ours = RougeMetric().compute(["고객이 교환을 요청했다."], [REF])
    assert 0 < ours["rouge2"] < ours["rouge1"] < 1
    unrelated = RougeMetric().compute(["날씨가 맑고 따뜻하다"], [REF])
    assert unrelated["rouge1"] < ours["rouge1"] / 3  # sensible: an unrelated sentence scores far lower


def test_korean_rouge_matches_hand_computed_values():
    # Kiwi morphemes: 고객/이/환불/을/요청/하/었/다 (8 tokens, 7 bigrams), punctuation dropped
    assert RougeTokenizer().tokenize(REF) == ["고객", "이", "환불", "을", "요청", "하", "었", "다"]
    # one morpheme swapped (환불 -> 교환): 7 of 8 unigrams, 5 of 7 bigrams, LCS 7
    swapped = RougeMetric().compute(["고객이 교환을 요청했다."], [REF])
    assert swapped == pytest.approx({"rouge1": 7 / 8, "rouge2": 5 / 7, "rougeL": 7 / 8})
    # reordered (환불을 고객이 ...): all 8 unigrams, 5 of 7 bigrams, LCS 6 (고객 이 요청 하 었 다)
    reordered = RougeMetric().compute(["환불을 고객이 요청했다"], [REF])
    assert reordered == pytest.approx({"rouge1": 1.0, "rouge2": 5 / 7, "rougeL": 6 / 8})
    # precision and recall differ: prediction of 4 tokens, all in the 8-token reference -> F1 = 2PR/(P+R)
    short = RougeMetric().compute(["고객이 요청"], [REF])  # 고객/이/요청: P = 3/3, R = 3/8
    assert short["rouge1"] == pytest.approx(2 * 1 * (3 / 8) / (1 + 3 / 8))


def test_english_rouge_uses_the_usual_stemmed_tokenizer_and_averages_pairs():
    english = RougeMetric().compute(["The customers asked for refunds.", "cats sit"],
                                    ["A customer asks for a refund", "cats sit"])
    # pair 1: the custom ask for refund / a custom ask for a refund -> 4 shared of 5 and 6: F1 = 8/11
    assert english["rouge1"] == pytest.approx((8 / 11 + 1.0) / 2)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        RougeMetric().compute(["a", "b"], ["a"])
    assert RougeMetric().compute([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_bleu_and_exact_match():
    import sacrebleu

    preds, refs = ["the cat sat on the mat", "고객이 환불을 요청했다"], ["the cat sat on a mat", "고객이 환불을 요청했다"]
    out = BleuMetric().compute(preds, refs)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score) and 0 < out["bleu"] < 100
    assert BleuMetric().compute(refs, refs)["bleu"] == pytest.approx(100.0)
    assert ExactMatchMetric().compute(["  Yes ", "ｎｏ", "maybe"], ["yes", "no", "no"]) == {"exact_match": 2 / 3}


def test_metrics_are_registered_with_their_direction():
    reg = registry()
    for name, keys in (("rouge", ("rouge1", "rouge2", "rougeL")), ("bleu", ("bleu", "chrf")),
                       ("exact_match", ("exact_match",))):
        metric = reg.get("metric", name)
        assert metric.keys == keys and metric.higher_is_better is True


@pytest.mark.skipif(not (SHARED_DATA / "dialogsum").exists(), reason="../shared/data/dialogsum is absent")
def test_dialogsum_preset_reads_dev_and_test_and_drops_the_dialogues_they_share(tmp_path):
    from omegaconf import OmegaConf

    from sllmx.data.pipeline import load_splits
    from tests.common import compose_config

    cfg = compose_config(["data=dialogsum", "model=tiny", f"shared_data={SHARED_DATA}"], tmp_path / "o", tmp_path / "c")
    reg = registry()
    splits = load_splits(cfg.data, reg, reg.get("trainer", "sft"))
    assert splits.format == "summarization" and len(splits.dev) == 100 and len(splits.test) == 500
    first = json.loads((SHARED_DATA / "dialogsum" / "dialogsum.test.jsonl").open().readline())
    assert splits.test[0]["completion"][0]["content"] == first["summary1"]
    assert splits.test[0]["prompt"][0]["content"].startswith("Summarize the following dialogue.\n\n#Person1#:")
    assert splits.report.leakage["dropped"] > 0 and len(splits.train) == 400 - splits.report.leakage["dropped"]
    assert OmegaConf.select(cfg, "data.metric") == "rouge"


def test_preference_metric_counts_pairs_and_averages_the_margin():
    from sllmx_plugins.metrics import PreferenceMetric

    out = PreferenceMetric().compute([-10.0, -5.0, -7.0], [-12.0, -4.0, -7.0])  # wins, loses, ties
    assert out == pytest.approx({"preference_accuracy": 1 / 3, "logp_margin": (2 - 1 + 0) / 3})
    assert PreferenceMetric.needs == "pair_logprobs"


def test_answer_logprobs_batched_equal_one_by_one_by_hand(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sllmx.generation import answer_logprobs
    from tests.common import compose_config

    cfg = compose_config(["model=tiny"], tmp_path / "o", tmp_path / "cache")
    source = registry().get("model", cfg.model.source)
    path = source.resolve(typed(cfg.model, "model"), str(tmp_path / "cache"))
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    prompts = [[{"role": "user", "content": "환불해 주세요"}], [{"role": "user", "content": "hi there, how are you?"}]]
    answers = [[{"role": "assistant", "content": "네, 처리해 드릴게요."}], [{"role": "assistant", "content": "ok"}]]
    batched = answer_logprobs(model, tok, prompts, answers, batch_size=2)
    for p, a, got in zip(prompts, answers, batched):
        full = tok(tok.apply_chat_template(p + a, tokenize=False), add_special_tokens=False,
                   return_tensors="pt")["input_ids"]
        start = len(tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        want = sum(logp[t - 1, full[0, t]].item() for t in range(start, full.shape[1]))
        assert got == pytest.approx(want, abs=1e-3)


def test_a_dpo_run_reports_preference_accuracy_before_and_after(tmp_path):
    from sllmx.run import run
    from tests.common import FAST, compose_config

    cfg = compose_config([*FAST, "trainer=dpo", "data.metric=preference", "eval.metric=preference_accuracy"],
                         tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    assert record.status == "COMPLETE" and record.dev_metric.name == "eval_preference_accuracy"
    assert record.dev_metric.higher_is_better is True
    history = record.dev_metric.history
    assert history[0]["step"] == 0 and 0 <= history[0]["value"] <= 1 and len(history) >= 2
    assert "eval_logp_margin" in history[-1]["metrics"] and "eval_rewards/accuracies" in history[-1]["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"chosen_logp", "rejected_logp"} <= set(rows[0])
    acc = sum(r["chosen_logp"] > r["rejected_logp"] for r in rows) / len(rows)
    assert acc == pytest.approx(history[-1]["metrics"]["eval_preference_accuracy"])


def test_a_preference_metric_with_a_non_pair_trainer_is_refused(tmp_path):
    from sllmx.errors import SllmxError
    from sllmx.run import run
    from tests.common import FAST, compose_config

    with pytest.raises(SllmxError, match="data.metric=preference scores preference pairs, but trainer=sft"):
        run(compose_config([*FAST, "data.metric=preference"], tmp_path / "run", tmp_path / "cache"))


def test_evaluate_reproduces_a_runs_dev_metric_and_sits_beside_the_base_model_in_a_report(tmp_path):
    from sllmx.evaluate import evaluate
    from sllmx.records import RunRecord
    from sllmx.comparison import build_table, collect
    from sllmx.run import run
    from tests.common import FAST, compose_config

    trained = run(compose_config([*FAST, "eval.early_stopping_patience=null"], tmp_path / "runs" / "lora",
                                 tmp_path / "cache"))
    cache = f"cache_dir={tmp_path / 'cache'}"
    again = evaluate(str(tmp_path / "runs" / "lora"), [cache], str(tmp_path / "runs" / "lora-eval"))
    # the saved (best) adapter on the same dev split gives the run's best dev loss
    assert again.dev_metric.best == pytest.approx(trained.dev_metric.best, rel=1e-4)
    assert again.method == "lora" and again.trainable_params == trained.trainable_params
    base = evaluate(None, [*FAST[:1], "data=support_ko", "data.n_train=24", "data.n_dev=6", "data.n_test=6",
                           "eval.max_new_tokens=24", "eval.test=true", cache], str(tmp_path / "runs" / "base"))
    assert base.method == "base" and base.trainable_params == 0 and base.global_steps == 0
    assert base.dev_metric.best == pytest.approx(trained.dev_metric.baseline, rel=1e-4)  # the untrained model
    assert "test_loss" in base.test_metrics and (tmp_path / "runs" / "base" / "generations-test.jsonl").exists()
    assert RunRecord.read(tmp_path / "runs" / "base" / "run.json").status == "COMPLETE"
    rows, _ = build_table(collect([tmp_path / "runs" / "base", tmp_path / "runs" / "lora-eval"]).records,
                          ["method", "trainer"])
    assert {r["method"] for r in rows} == {"base", "lora"}
    with pytest.raises(Exception, match="already exists"):
        evaluate(None, [cache, "model=tiny"], str(tmp_path / "runs" / "base"))


def test_evaluate_command_bad_input_is_one_line(tmp_path):
    import subprocess
    import sys

    from tests.common import ROOT

    proc = subprocess.run([sys.executable, "-m", "sllmx.evaluate", str(tmp_path / "nope")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"sllmx: error: {tmp_path / 'nope' / 'run.json'}: not " \
        "found; give a run directory (one with run.json)"


def test_sft_runs_log_dev_perplexity_and_it_can_be_the_dev_metric(tmp_path):
    import math

    from sllmx.run import run
    from tests.common import FAST, compose_config

    record = run(compose_config([*FAST, "eval.metric=perplexity"], tmp_path / "run", tmp_path / "cache"))
    assert record.dev_metric.name == "eval_perplexity" and record.dev_metric.higher_is_better is False
    for point in record.dev_metric.history:
        assert point["value"] == pytest.approx(math.exp(point["metrics"]["eval_loss"]))


def test_an_evaluation_stopped_by_sigterm_records_interrupted(tmp_path):
    """Evaluation-only runs go through the runner's record lifecycle: a signal ends them with an honest record."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.common import ROOT

    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "-m", "sllmx.evaluate", "model=tiny", "logger=none", "data.n_dev=32",
                             "eval.max_new_tokens=128", f"cache_dir={tmp_path / 'cache'}", "--out", str(out)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "run.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads((out / "run.json").read_text())["status"] == "RUNNING"  # written before the model loads
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == f"sllmx: SIGTERM: evaluation stopped; {out}/run.json says INTERRUPTED"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "INTERRUPTED" and record["error"].startswith("SIGTERM")
