"""Prompting baselines (issue 18): zero_shot, few_shot and rag as methods that train nothing, through the same
runner, metrics and run.json as a fine-tuned run; eval.rag on a trained run; per-example scores, prompt
tokens and latency in what an evaluation writes."""

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from sllmx.errors import SllmxError
from sllmx.prompting import chain, few_shot, last_user_text, rag, rewrite_split
from tests.common import FAST, ROOT, compose_config

SYSTEM = {"role": "system", "content": "Answer in JSON."}


def _rows(texts, answers=None):
    answers = answers or [f"answer {i}" for i in range(len(texts))]
    return Dataset.from_list([{"prompt": [SYSTEM, {"role": "user", "content": t}],
                               "completion": [{"role": "assistant", "content": a}]}
                              for t, a in zip(texts, answers)])


def _generations(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- sllmx.prompting, no model ----------------------------------------------------------------------------

def test_few_shot_random_puts_k_train_examples_before_the_question_seeded():
    train = _rows([f"question {i}" for i in range(20)])
    prompting = few_shot(train, k=3, selection="random", seed=7)
    prompt = [SYSTEM, {"role": "user", "content": "the dev question"}]
    out = prompting.rewrite(prompt)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert out[0] == SYSTEM and out[-1] == prompt[-1]
    shots = [m["content"] for m in out[1:-1] if m["role"] == "user"]
    assert len(set(shots)) == 3 and all(s.startswith("question ") for s in shots)
    for q, a in zip(out[1:-1:2], out[2:-1:2]):  # each example keeps its own answer
        assert a["content"] == f"answer {q['content'].split()[1]}"
    assert few_shot(train, 3, "random", 7).rewrite(prompt) == out  # the same seed, the same examples
    others = {json.dumps(few_shot(train, 3, "random", s).rewrite(prompt)) for s in range(8)}
    assert len(others) > 1  # the seed matters
    assert prompting.record() == {"kind": "few_shot", "k": 3, "selection": "random", "seed": 7, "examples": 20}


def test_few_shot_takes_no_undesirable_answer_and_caps_k():
    train = Dataset.from_list([{"prompt": "good?", "completion": "yes", "label": True},
                               {"prompt": "bad?", "completion": "no", "label": False}])
    out = few_shot(train, k=5, selection="random").rewrite("question")
    assert out == "good?\nyes\n\nquestion"  # a string prompt: the examples' text first; k capped at 1


def test_few_shot_similar_picks_the_examples_closest_to_the_question():
    pytest.importorskip("bm25s")
    texts = ["환불을 신청하고 싶어요", "배송이 너무 늦어요", "주소를 바꾸고 싶습니다", "주문을 취소해 주세요",
             "다른 색으로 교환하고 싶어요", "환불은 언제 되나요"]
    out = few_shot(_rows(texts), k=2, selection="similar").rewrite([SYSTEM, {"role": "user", "content": "환불 부탁드립니다"}])
    shots = [m["content"] for m in out[1:-1] if m["role"] == "user"]
    assert sorted(shots) == sorted(["환불을 신청하고 싶어요", "환불은 언제 되나요"])


def test_rag_puts_the_retrieved_passages_into_the_users_message(tmp_path):
    pytest.importorskip("bm25s")
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "policy.md").write_text("환불은 수령 후 7일 이내에 신청할 수 있습니다.\n\n교환은 같은 상품의 다른 색상으로만 "
                                      "가능합니다.\n\n배송 지연 시 고객센터로 연락 주세요.", encoding="utf-8")
    prompting = rag(str(corpus), k=1, template="자료:\n{passages}\n\n질문: {question}", train=_rows(["x"]))
    out = prompting.rewrite([SYSTEM, {"role": "user", "content": "환불을 신청하고 싶어요"}])
    assert out[0] == SYSTEM and len(out) == 2
    assert out[1]["content"] == "자료:\n[1] 환불은 수령 후 7일 이내에 신청할 수 있습니다.\n\n질문: 환불을 신청하고 싶어요"
    assert prompting.record()["passages"] == 3 and prompting.record()["corpus"] == str(corpus)
    answers = rag("train", k=2, template="{passages}|{question}", train=_rows(["a", "b"], ["ans one", "ans two"]))
    assert answers.rewrite("ans two?").startswith("[1] ans two\n[2] ans one|")


def test_rag_and_few_shot_refuse_bad_options_in_one_line(tmp_path):
    with pytest.raises(SllmxError, match=r"lacks \{question\}"):
        rag("train", 2, "{passages} only", _rows(["a"]))
    with pytest.raises(SllmxError, match="selection='nearest': use random or similar"):
        few_shot(_rows(["a"]), 1, "nearest")
    with pytest.raises(SllmxError, match=r"need prompts and answers; the train split has \[.text.\]"):
        few_shot(Dataset.from_list([{"text": "plain"}]), 1)


def test_rewrite_split_rewrites_prompts_and_messages_and_chain_applies_in_order():
    add = lambda tag: lambda p: [*p[:-1], {"role": "user", "content": p[-1]["content"] + tag}]  # noqa: E731
    from sllmx.prompting import Prompting

    both = chain(Prompting("a", add("+a")), None, Prompting("b", add("+b")))
    assert both.kind == "a+b" and chain(None) is None
    done = rewrite_split(_rows(["q"]), both)
    assert last_user_text(done[0]["prompt"]) == "q+a+b" and done[0]["completion"][0]["content"] == "answer 0"
    msgs = Dataset.from_list([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}])
    out = rewrite_split(msgs, both)[0]["messages"]
    assert out == [{"role": "user", "content": "q+a+b"}, {"role": "assistant", "content": "r"}]


# -- through the runner, model=tiny ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_zero_shot_and_few_shot_are_evaluation_only_rows_with_prompt_cost(tmp_path, cache_dir):
    from sllmx.data.pipeline import load_splits
    from sllmx.plugins import registry
    from sllmx.run import run

    records, gens = {}, {}
    for method in ("zero_shot", "few_shot"):
        cfg = compose_config([*FAST, f"method={method}", "eval.test=true"], tmp_path / method, cache_dir)
        records[method] = run(cfg)
        gens[method] = _generations(tmp_path / method / "generations-eval.jsonl")
    zero, few = records["zero_shot"], records["few_shot"]
    for record in (zero, few):
        assert record.status == "COMPLETE" and record.baseline is True
        assert record.global_steps == 0 and record.trainable_params == 0
        assert len(record.dev_metric.history) == 1 and record.dev_metric.best == record.dev_metric.baseline
        assert record.test_metrics["test_prompt_tokens"] > 0 and record.test_metrics["test_latency_s"] > 0
        assert not (tmp_path / record.method / "model").exists()  # nothing trained, nothing saved
    assert zero.prompting == {} and few.prompting["kind"] == "few_shot" and few.prompting["k"] == 3
    assert zero.data["splits"]["dev"]["sha256"] == few.data["splits"]["dev"]["sha256"]  # the same examples
    assert few.data["splits"]["dev"]["prompts_sha256"] != few.data["splits"]["dev"]["sha256"]

    # per-example scores: their mean is the split's metric; the prompt tokens are each prompt's
    for method, rows in gens.items():
        metrics = records[method].dev_metric.history[0]["metrics"]
        assert len(rows) == 6 and all(set(r["scores"]) == {"json_fields", "json_exact", "json_valid"} for r in rows)
        assert sum(r["scores"]["json_fields"] for r in rows) / 6 == pytest.approx(metrics["eval_json_fields"])
        assert sum(r["prompt_tokens"] for r in rows) / 6 == pytest.approx(metrics["eval_prompt_tokens"])
    assert few.dev_metric.history[0]["metrics"]["eval_prompt_tokens"] > \
        2 * zero.dev_metric.history[0]["metrics"]["eval_prompt_tokens"]  # three examples cost tokens

    # the examples come from train, never from dev or test; the question stays the dev row's
    cfg = compose_config([*FAST, "method=zero_shot"], tmp_path / "x", cache_dir)
    reg = registry()
    splits = load_splits(cfg.data, reg, reg.get("trainer", "sft"))
    train = {last_user_text(r["prompt"]) for r in splits.train}
    held_out = {last_user_text(r["prompt"]) for r in splits.dev} | {last_user_text(r["prompt"]) for r in splits.test}
    for zrow, frow in zip(gens["zero_shot"], gens["few_shot"]):
        shots = [m["content"] for m in frow["input"][1:-1] if m["role"] == "user"]
        assert len(shots) == 3 and set(shots) <= train and not set(shots) & held_out
        assert frow["input"][-1] == zrow["input"][-1] and frow["reference"] == zrow["reference"]


def test_a_trained_run_evaluated_with_retrieval_records_it(tmp_path, cache_dir):
    pytest.importorskip("bm25s")
    from sllmx.run import run

    record = run(compose_config([*FAST, "eval.rag=train", "eval.rag_k=2"], tmp_path / "run", cache_dir))
    assert record.status == "COMPLETE" and record.baseline is False and record.global_steps == 4
    assert record.prompting["kind"] == "rag" and record.prompting["k"] == 2 and record.prompting["corpus"] == "train"
    from sllmx.comparison import method_label

    assert method_label(record) == "lora+rag"  # the report's row of its own
    rows = _generations(tmp_path / "run" / "generations.jsonl")
    question = rows[0]["input"][-1]["content"]
    assert question.startswith("Reference passages (use them if they help):\n[1] {") and "\n[2] {" in question


def test_rewritten_prompts_longer_than_max_length_are_evaluated_whole(tmp_path, cache_dir):
    """A few-shot prompt longer than trainer.max_length would lose its answer (TRL then drops the example and the
    dev split has no eval_loss: SmolLM2's 3-shot prompts at 512): an evaluation-only run raises the limit and says
    so in run.json; a training run with eval.rag is refused in one line with the value that fits."""
    from sllmx.run import run

    record = run(compose_config([*FAST, "method=few_shot", "trainer.max_length=128"], tmp_path / "few", cache_dir))
    assert record.status == "COMPLETE" and record.dev_metric.baseline is not None
    raised = record.prompting["max_length"]
    longest = max(r["prompt_tokens"] for r in _generations(tmp_path / "few" / "generations-eval.jsonl"))
    assert raised["from"] == 128 and raised["to"] % 16 == 0 and raised["to"] > longest > 128
    assert "eval_loss" in record.dev_metric.history[0]["metrics"]

    pytest.importorskip("bm25s")
    with pytest.raises(SllmxError, match=r"trainer.max_length=24 cuts the rewritten rag prompts of the (dev|test) "
                                         r"split .*give trainer.max_length=\d+"):
        run(compose_config([*FAST, "eval.rag=train", "trainer.max_length=24"], tmp_path / "lora", cache_dir))
    assert not (tmp_path / "lora" / "model").exists()


def test_a_bad_corpus_is_one_line_before_anything_loads(tmp_path):
    pytest.importorskip("bm25s")
    proc = subprocess.run([sys.executable, "-m", "sllmx", "model=tiny", "logger=none", "method=rag",
                           f"method.corpus={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("sllmx: error: ") and str(tmp_path / "nope") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "run.json").exists()


def test_rag_fills_its_template_in_one_pass_and_a_leak_is_found():
    pytest.importorskip("bm25s")
    from sllmx.prompting import leaked

    train = _rows(["환불 문의"], ['see {question} and {passages} here'])
    out = rag("train", 1, "P: {passages} | Q: {question}", train).rewrite("환불 {passages} 문의")
    assert out == "P: [1] see {question} and {passages} here | Q: 환불 {passages} 문의"  # nothing filled twice
    dev = _rows(["주문 취소해 주세요", "배송 언제 와요"], ['{"intent": "cancel"}', '{"intent": "delivery_delay"}'])
    leaky = rag("train", 1, "{passages}\n{question}", _rows(["주문 취소"], ['{"intent": "cancel"}']))
    assert leaked(dev, rewrite_split(dev, leaky)) == [0]  # row 0 is now shown its own answer
    assert leaked(dev, dev) == []


def test_method_rag_with_eval_rag_is_refused_in_one_line(tmp_path):
    from sllmx.run import run

    with pytest.raises(SllmxError, match="method=rag already retrieves; eval.rag would retrieve a second time"):
        run(compose_config([*FAST, "method=rag", "eval.rag=train"], tmp_path / "run", tmp_path / "cache"))
    assert not (tmp_path / "run" / "run.json").exists()


def test_dense_retrieval_with_a_local_model_finds_the_same_text_first(tmp_path):
    """Dense retrieval embeds with a model folder on disk (here the tiny test model: its states are random, but
    a text is always closest to itself); a missing folder is one line."""
    import os

    from sllmx.compose import compose
    from sllmx.plugins import registry, typed
    from sllmx.retrieval import DenseRetriever, Passage

    cfg = compose(["model=tiny", f"cache_dir={tmp_path / 'cache'}"])
    path = registry().get("model", "tiny").resolve(typed(cfg.model, "model"), os.path.expanduser(cfg.cache_dir))
    texts = ["환불은 7일 이내", "배송 지연 안내", "주소 변경 방법", "교환 정책"]
    index = DenseRetriever([Passage(t, f"p{i}") for i, t in enumerate(texts)], path)
    for i, text in enumerate(texts):
        (best, score), *_ = index.search(text, 2)
        assert best == i and score == pytest.approx(1.0, abs=1e-4)
    prompting = rag("train", 1, "{passages}|{question}", _rows(["a", "b"], ["환불은 7일 이내", "교환 정책"]),
                    embedding_model=path)
    assert prompting.record()["retriever"] == "dense" and prompting.rewrite("교환 정책").startswith("[1] 교환 정책|")
    with pytest.raises(SllmxError, match="embedding model /nope: no such folder"):
        DenseRetriever([Passage("x", "p0")], "/nope")
