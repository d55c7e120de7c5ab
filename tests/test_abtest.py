"""python -m sllmx.abtest: a blind pairwise A/B study on fake run folders (run.json + generation files).

The export is blind (no run folder, method or run.json value on the page or in items.csv), escaped, and
reproducible from its seed; the scoring unblinds with the key and its numbers equal direct scipy /
statsmodels calls and the textbook formulas; bad CSV lines are one-line errors naming the file and line; and
the page works in a real headless Chromium: a scripted judge (a test double for a person) judges every item,
saves, and ``score`` reads the downloaded CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from sllmx.ab_score import read_judgments, read_key, score
from sllmx.ab_stats import BT_ALPHA, _bt_fit, agreement, bradley_terry, majority, win_rate
from sllmx.abtest import build_export, main
from sllmx.errors import SllmxError
from sllmx.records import DevMetric, RunRecord
from tests.common import ROOT

N = 30
QUESTIONS = [f'주문 A{i:05d} 취소해 주세요 <급함> & "빨리" {{"qty": {i}}}' for i in range(N)]
REFERENCES = [json.dumps({"intent": "cancel", "order_id": f"A{i:05d}"}, ensure_ascii=False) for i in range(N)]


def first_answer(i: int) -> str:
    """The first system: JSON with markup, quotes and Korean in it, except every 10th row from 7 (not JSON)."""
    if i % 10 == 7:
        return "주문을 찾을 수 없습니다 <br>"
    return json.dumps({"intent": "cancel", "order_id": f"A{i:05d}", "quantity": i,
                       "note": "<script>alert('x')</script> & \"따옴표\" </p>"}, ensure_ascii=False)


def second_answer(i: int) -> str:
    """The second system: the same answer (a tie), a shorter or a longer JSON, or text that is not JSON."""
    if i % 10 == 7:
        return "모르겠습니다"  # neither is JSON: both bad
    return [first_answer(i),  # equal: tie
            '{"intent": "cancel"}',  # shorter JSON: the first wins
            "취소 처리해 드렸습니다.",  # not JSON: the first wins
            first_answer(i)[:-1] + ', "extra": "더 긴 답변"}',  # longer JSON: the second wins
            ][i % 4]


def third_answer(i: int) -> str:
    """A third system that never answers in JSON."""
    return f"[{i}] 답변할 수 없습니다"


def write_run(folder: Path, method: str, answers, trainer: str = "sft", baseline: bool = False,
              test: bool = True, few_shot: bool = False) -> Path:
    """A finished run folder: run.json (a RunRecord) and its generation file of N rows."""
    folder.mkdir(parents=True)
    config = {"method": {"name": method, "r": 16}, "trainer": {"name": trainer, "learning_rate": 2e-4},
              "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "seed": 3,
              "output_dir": str(folder)}
    RunRecord(status="COMPLETE", method=method, trainer=trainer,
              model={"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, data={"name": "support_ko"},
              seed=3, config=config, dev_metric=DevMetric(name="eval_json_fields", higher_is_better=True, best=0.5),
              output_dir=str(folder), baseline=baseline,
              prompting={"kind": "few_shot", "k": 1} if few_shot else {}).write(folder)
    rows = []
    for i in range(N):
        shots = [{"role": "user", "content": "예시 질문 EXAMPLE-SHOT"}, {"role": "assistant", "content": "{}"}]
        messages = [{"role": "system", "content": "SYSTEM-PROMPT JSON으로 답하세요."}, *(shots if few_shot else []),
                    {"role": "user", "content": QUESTIONS[i]}]
        rows.append({"input": messages, "reference": REFERENCES[i], "prediction": answers(i), "truncated": False,
                     "prompt_tokens": 40, "scores": {"json_fields": 0.5}})
    name = "generations-test.jsonl" if test else "generations-eval.jsonl"
    (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture
def runs(tmp_path):
    """Two runs (LoRA SFT; a few-shot baseline) and a third (DoRA) answered on the same 30 test rows."""
    day = tmp_path / "outputs" / "2026-11-21"
    return [write_run(day / "10-00-00-lora-sft", "lora", first_answer),
            write_run(day / "10-05-00-few_shot-sft", "few_shot", second_answer, baseline=True, few_shot=True),
            write_run(day / "10-09-00-dora-sft", "dora", third_answer)]


def answers_of(key, run_answers):
    """Each item's (answer A, answer B) as the key says: from the systems' generation files."""
    by_id = {s["id"]: k for k, s in enumerate(key["systems"])}
    return {it["item"]: (run_answers[by_id[it["A"]]](it["row"]), run_answers[by_id[it["B"]]](it["row"]))
            for it in key["items"]}


def longer_valid_json_judge(answer_a: str, answer_b: str) -> str:
    """A test double for a person: prefers the answer that is valid JSON and longer; a tie when equal in that,
    both bad when neither parses."""
    def valid(text):
        try:
            json.loads(text)
            return True
        except ValueError:
            return False

    if not valid(answer_a) and not valid(answer_b):
        return "both_bad"
    if valid(answer_a) != valid(answer_b):
        return "A" if valid(answer_a) else "B"
    return "tie" if len(answer_a) == len(answer_b) else "A" if len(answer_a) > len(answer_b) else "B"


def expected_record(key, labels):
    """The first system's wins / losses / ties / both bad against the second, from the key and the labels."""
    counts = {"win": 0, "loss": 0, "tie": 0, "both_bad": 0}
    for it in key["items"]:
        label = labels.get(it["item"])
        if label in ("tie", "both_bad"):
            counts[label] += 1
        elif label:
            counts["win" if it[label] == "S1" else "loss"] += 1
    return counts


def write_csv(path: Path, rows, header=("item", "judgment", "judge", "comment")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


class Texts(HTMLParser):
    """The text inside each element with an id (answers, questions) of the page, as a browser reads it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.texts, self.scripts = [], {}, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        self.stack.append(attrs.get("id") or (self.stack[-1] if self.stack else None))

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1]:
            self.texts[self.stack[-1]] = self.texts.get(self.stack[-1], "") + data


# -- export -------------------------------------------------------------------------------------------------------

def test_the_export_is_blind_escaped_and_complete(runs, tmp_path):
    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--n", "20", "--out", str(out), "--lang", "ko"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    raw_csv = (out / "items.csv").read_bytes()
    key = json.loads((out / "key.json").read_text(encoding="utf-8"))
    assert key["split"] == "test" and key["n"] == 20 and key["rows"] == N and key["seed"] == 0
    assert [s["method"] for s in key["systems"]] == ["lora", "few_shot"]
    assert len({it["row"] for it in key["items"]}) == 20 and all(0 <= it["row"] < N for it in key["items"])
    # blind: nothing of the runs is on the page or in the spreadsheet, apart from the questions and answers
    secrets = {"lora", "few_shot", "sft", "SmolLM2", "support_ko", "eval_json_fields", "EXAMPLE-SHOT",
               "SYSTEM-PROMPT", "2026-11-21", str(tmp_path)}
    for run in runs[:2]:
        secrets.add(run.name)
        record = json.loads((run / "run.json").read_text(encoding="utf-8"))
        stack = [record]
        while stack:  # every string of run.json
            value = stack.pop()
            if isinstance(value, dict):
                stack += list(value.values())
            elif isinstance(value, list):
                stack += value
            elif isinstance(value, str) and len(value) >= 4:
                secrets.add(value)
    text_csv = raw_csv.decode("utf-8-sig")
    for secret in secrets:  # as written, and the method and folder names in any case
        assert secret not in page and secret not in text_csv, secret
    for secret in ("lora", "few_shot", "few-shot", "sft", "smollm", *(run.name.lower() for run in runs)):
        assert secret not in page.lower() and secret not in text_csv.lower(), secret
    assert "key.json" not in page and "run.json" not in page
    # self-contained: no link, source or fetch to anywhere
    assert "http://" not in page and "https://" not in page and "src=" not in page and "<link" not in page
    assert "default-src 'none'" in page and '<html lang="ko">' in page
    # escaped: the answers' markup is text, and reads back exactly as the runs wrote it
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    parser = Texts()
    parser.feed(page)
    assert parser.scripts == 2  # the page's own: its texts (JSON) and its code
    expected = answers_of(key, [first_answer, second_answer])
    for it in key["items"]:
        n = it["item"]
        assert parser.texts[f"answer-{n}-A"].endswith(expected[n][0]) and parser.texts[f"answer-{n}-B"].endswith(
            expected[n][1])
        assert QUESTIONS[it["row"]] in page.replace("&lt;", "<").replace("&gt;", ">").replace(
            "&quot;", '"').replace("&amp;", "&")
    assert "답변 A" in page and "A가 더 좋음" in page and "20개 중 0개 평가함" in page  # --lang ko
    assert REFERENCES[0] not in page  # the reference only with --show-reference
    # items.csv: a BOM for Excel, the same items, the judge's columns empty
    assert raw_csv.startswith(b"\xef\xbb\xbf")
    table = list(csv.DictReader(io.StringIO(text_csv)))
    assert list(table[0]) == ["item", "question", "answer_A", "answer_B", "judgment", "comment", "export"]
    assert [int(r["item"]) for r in table] == list(range(1, 21))
    for r, it in zip(table, key["items"]):
        assert (r["question"], r["answer_A"], r["answer_B"]) == (QUESTIONS[it["row"]], *expected[it["item"]])
        assert r["judgment"] == r["comment"] == "" and r["export"] == key["export_id"]


def test_the_seed_reproduces_the_export_and_the_sides_are_balanced(runs, tmp_path):
    args = [str(runs[0]), str(runs[1]), "--n", "24"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert main(["export", *args, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    for name in ("index.html", "items.csv", "key.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    key5, key6 = (json.loads((tmp_path / n / "key.json").read_text()) for n in ("a", "c"))
    # the key rebuilds the assignment: build_export with the key's seed gives the same key
    again, _ = build_export([str(runs[0]), str(runs[1])], n=24, seed=key5["seed"])
    assert again == key5
    sides5 = [(it["row"], it["A"]) for it in key5["items"]]
    sides6 = [(it["row"], it["A"]) for it in key6["items"]]
    assert sides5 != sides6 and key5["export_id"] != key6["export_id"]
    for key in (key5, key6):  # exactly balanced: half of the items have S1 on the left
        assert sum(it["A"] == "S1" for it in key["items"]) == 12
    # all rows when fewer than --n; the draw is without replacement
    full, _ = build_export([str(runs[0]), str(runs[1])], n=500, seed=1)
    assert sorted(it["row"] for it in full["items"]) == list(range(N))


def test_more_than_two_systems_take_turns_in_pairs(runs):
    key, items = build_export([str(r) for r in runs], n=30, seed=2)
    pairs = [tuple(sorted((it["A"], it["B"]))) for it in key["items"]]
    assert {p: pairs.count(p) for p in set(pairs)} == {("S1", "S2"): 10, ("S1", "S3"): 10, ("S2", "S3"): 10}
    # the question shown is the user's own, not the few-shot prompt's examples
    assert all(it["question"] == QUESTIONS[k["row"]] for it, k in zip(items, key["items"]))


def test_without_test_answers_everywhere_the_dev_answers_are_paired(runs, tmp_path):
    dev = write_run(tmp_path / "dev-only", "zero_shot", second_answer, baseline=True, test=False)
    with pytest.raises(SllmxError, match="no generations-eval.jsonl or generations.jsonl"):
        build_export([str(runs[0]), str(dev)], n=5)
    (runs[0] / "generations-test.jsonl").rename(runs[0] / "generations.jsonl")  # a training run's dev answers
    key, _ = build_export([str(runs[0]), str(dev)], n=5)
    assert key["split"] == "dev" and [s["file"] for s in key["systems"]] == ["generations.jsonl",
                                                                            "generations-eval.jsonl"]
    with pytest.raises(SllmxError, match=r"10-00-00-lora-sft: no generations-test.jsonl .*--split dev"):
        build_export([str(runs[0]), str(dev)], n=5, split="test")


def edit_rows(path: Path, change) -> None:
    """Rewrite a generation file after ``change(rows)``."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("change, message", [
    (lambda runs: edit_rows(runs[1] / "generations-test.jsonl", lambda rows: rows[4].update(reference="{}")),
     r"not paired: the references differ at row 5 of .*10-00-00-lora-sft/generations-test.jsonl and "),
    (lambda runs: edit_rows(runs[1] / "generations-test.jsonl", lambda rows: rows.pop()),
     r"not paired: .* has 30 rows, .*few_shot-sft/generations-test.jsonl 29"),
    (lambda runs: (runs[1] / "generations-test.jsonl").write_text('{"input": [], "chosen_logp": -1.0}\n'),
     r"few_shot-sft/generations-test.jsonl: line 1: field prediction: no generated answer"),
    (lambda runs: (runs[1] / "generations-test.jsonl").write_text("{oops\n"),
     r"few_shot-sft/generations-test.jsonl: line 1: not JSON"),
    (lambda runs: (runs[1] / "run.json").unlink(), r"10-05-00-few_shot-sft: not a run folder \(no run.json in it\)"),
])
def test_runs_that_cannot_be_compared_are_one_line_errors(runs, change, message):
    change(runs)
    with pytest.raises(SllmxError, match=message) as caught:
        build_export([str(runs[0]), str(runs[1])])
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_bad_input_with_one_line(runs, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sllmx.abtest", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "SLLMX_TRACEBACK": ""})

    out = tmp_path / "study"
    done = cli("export", str(runs[0]), str(runs[1]), "--n", "6", "--out", str(out))
    assert done.returncode == 0 and "keep it away from the judges" in done.stdout
    for args, message in [
        (("export", str(runs[0])), "export needs at least two runs to compare"),
        (("export", str(runs[0]), str(runs[0])), "given twice"),
        (("export", str(runs[0]), str(runs[1]), "--n", "6", "--out", str(out)), "the file exists; nothing is "
                                                                                 "overwritten"),
        (("export", str(runs[0]), str(runs[1]), "--n", "0"), "--n 0: must be >= 1"),
        (("export", str(runs[0]), str(runs[1]), "--lang", "de"), "argument --lang: invalid choice"),
        (("score", str(out), str(write_csv(tmp_path / "bad.csv", [["1", "A"], ["2", "maybe"]], ("item", "judgment")))),
         f"{tmp_path / 'bad.csv'}: line 3: field judgment: 'maybe'; use A, B, tie or both_bad"),
        (("score", str(tmp_path), str(tmp_path / "bad.csv")), f"{tmp_path / 'key.json'}: no such key file"),
        (("score", str(out), str(tmp_path / "none.csv")), "none.csv: cannot be read (FileNotFoundError"),
    ]:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("sllmx: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "items.csv", "key.json"]  # nothing overwritten


# -- score --------------------------------------------------------------------------------------------------------

def test_known_judgments_give_exact_counts_and_scipys_numbers(runs, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--out", str(out), "--seed", "3"]) == 0
    capsys.readouterr()
    key = read_key(out / "key.json")
    expected = answers_of(key, [first_answer, second_answer])
    labels = {n: longer_valid_json_judge(*expected[n]) for n in expected}
    path = write_csv(tmp_path / "judgments-kim.csv",
                     [[n, labels[n], "kim", "쉼표, \"따옴표\"" if n == 1 else ""] for n in sorted(labels)])
    assert main(["score", str(out), str(path), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    counts = expected_record(key, labels)
    assert counts["win"] and counts["loss"] and counts["tie"] and counts["both_bad"]  # every outcome occurs
    (pair,) = result["pairs"]
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == (
        counts["win"], counts["loss"], counts["tie"], counts["both_bad"])
    decided = counts["win"] + counts["loss"]
    test = stats.binomtest(counts["win"], decided)
    ci = test.proportion_ci(method="wilson")
    assert pair["win_rate"] == counts["win"] / decided and pair["decided"] == decided
    assert (pair["ci_low"], pair["ci_high"]) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert pair["sign_test_p"] == pytest.approx(test.pvalue, rel=1e-12)
    assert pair["win_rate_ties_half"] == pytest.approx((counts["win"] + (counts["tie"] + counts["both_bad"]) / 2) / N)
    assert result["judges"] == ["kim"] and result["agreement"] is None and result["bradley_terry"] is None
    assert result["items_judged"] == N and result["items_not_judged"] == 0
    assert [s["method"] for s in result["systems"]] == ["lora", "few_shot"]
    # the Markdown names the systems, unblinded, with the numbers
    assert main(["score", str(out), str(path)]) == 0
    text = capsys.readouterr().out
    assert f"- S1: lora × sft ({runs[0]})" in text and f"- S2: few_shot × sft ({runs[1]})" in text
    assert (f"| S1 vs S2 | {counts['win']} | {counts['loss']} | {counts['tie']} | {counts['both_bad']} | "
            f"{counts['win'] / decided:.3f} ({counts['win']}/{decided}) | {ci.low:.3f} to {ci.high:.3f} | "
            f"{test.pvalue:.3g} |") in text
    assert "ties and both bad are left out of it" in text


def test_the_wilson_interval_is_the_textbook_formula():
    """Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n); 20 of 30 is docs/abtest.md's
    example."""
    z = stats.norm.ppf(0.975)
    for wins, n in ((20, 30), (3, 4), (0, 12), (12, 12)):
        p = wins / n
        centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        result = win_rate(wins, n - wins)
        assert (result["ci_low"], result["ci_high"]) == pytest.approx(
            ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)), abs=1e-9)
    twenty = win_rate(20, 10)
    assert (round(twenty["ci_low"], 2), round(twenty["ci_high"], 2)) == (0.49, 0.81)
    assert round(twenty["ci_high"] - twenty["ci_low"], 2) == 0.32
    assert twenty["sign_test_p"] == pytest.approx(0.0987, abs=1e-4)
    empty = win_rate(0, 0, ties=3)
    assert empty["win_rate"] is None and empty["sign_test_p"] is None and empty["win_rate_ties_half"] == 0.5


def test_cohens_kappa_on_the_textbook_example(runs, tmp_path, capsys):
    """Two judges, 50 yes/no items: both yes 20, both no 15, only the first yes 10, only the second 5; p_o = 0.7,
    p_e = 0.5, kappa = 0.4 (the standard worked example of Cohen, 1960, as on Wikipedia's page)."""
    day = tmp_path / "more"
    big = [write_run(day / "a", "lora", lambda i: "x"), write_run(day / "b", "dora", lambda i: "y")]
    for run in big:  # 50 rows
        path = next(run.glob("generations-*.jsonl"))
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows = [{**rows[k % N], "reference": f"r{k}"} for k in range(50)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["export", *map(str, big), "--n", "50", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    first = ["A"] * 20 + ["B"] * 15 + ["A"] * 10 + ["B"] * 5
    second = ["A"] * 20 + ["B"] * 15 + ["B"] * 10 + ["A"] * 5
    one = write_csv(tmp_path / "one.csv", [[k + 1, x, "lee", ""] for k, x in enumerate(first)])
    two = write_csv(tmp_path / "two.csv", [[k + 1, x, "park", ""] for k, x in enumerate(second)])
    assert main(["score", str(tmp_path / "s"), str(one), str(two), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"]["method"] == "Cohen's kappa" and result["agreement"]["items"] == 50
    assert result["agreement"]["kappa"] == pytest.approx(0.4) and result["agreement"]["observed"] == pytest.approx(0.7)
    from statsmodels.stats.inter_rater import cohens_kappa
    assert result["agreement"]["kappa"] == pytest.approx(cohens_kappa([[20, 10], [5, 15]]).kappa)
    assert set(result["per_judge"]) == {"lee", "park"} and result["judgments"] == 100
    # one outcome per item: the two judges' majority; the 15 split items are ties
    (pair,) = result["pairs"]
    assert pair["ties"] == 15 and pair["wins"] + pair["losses"] == 35


def test_fleiss_kappa_is_the_textbook_formula():
    """Fleiss (1971): P_i = (Σ_j n_ij² − m) / (m(m − 1)), P̄ its mean, p_j the share of label j,
    P̄e = Σ p_j², kappa = (P̄ − P̄e) / (1 − P̄e)."""
    rng = np.random.default_rng(4)
    labels = ["A", "B", "tie", "both_bad"]
    truth = rng.choice(4, 40, p=[0.45, 0.35, 0.15, 0.05])
    ratings = [[labels[t] if rng.random() < 0.7 else labels[rng.integers(4)] for _ in range(4)] for t in truth]
    counts = np.array([[row.count(x) for x in labels] for row in ratings], dtype=float)
    m = 4
    p_i = (np.sum(counts ** 2, axis=1) - m) / (m * (m - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    kappa = (p_i.mean() - np.sum(p_j ** 2)) / (1 - np.sum(p_j ** 2))
    result = agreement(ratings)
    assert result["method"] == "Fleiss' kappa" and result["judges"] == 4 and result["items"] == 40
    assert result["kappa"] == pytest.approx(kappa, abs=1e-12) and result["observed"] == pytest.approx(p_i.mean())
    assert 0.3 < kappa < 0.9
    same = agreement([["A", "A"], ["A", "A"], ["A", "A"]])
    assert same["kappa"] is None and "undefined" in same["reason"] and same["observed"] == 1.0
    assert majority(["A", "B"]) == "tie" and majority(["A", "B", "A"]) == "A" and majority(["tie", "both_bad",
                                                                                              "both_bad"]) == "both_bad"


def test_bradley_terry_ranks_the_system_that_always_wins_first(runs, tmp_path, capsys):
    out = tmp_path / "three"
    assert main(["export", *map(str, runs), "--n", "30", "--out", str(out), "--seed", "1"]) == 0
    capsys.readouterr()
    key = read_key(out / "key.json")
    answers = answers_of(key, [first_answer, second_answer, third_answer])
    # a judge who always prefers S3 (which never answers in JSON), else the longer-valid-JSON rule
    rows = []
    for it in key["items"]:
        label = "A" if it["A"] == "S3" else "B" if it["B"] == "S3" else longer_valid_json_judge(*answers[it["item"]])
        rows.append([it["item"], label, "choi", ""])
    path = write_csv(tmp_path / "choi.csv", rows)
    assert main(["score", str(out), str(path), "--format", "json", "--bootstrap", "300"]) == 0
    bt = json.loads(capsys.readouterr().out)["bradley_terry"]
    ranking = bt["ranking"]
    assert [r["system"] for r in ranking][0] == "S3" and ranking[0]["losses"] == 0 and ranking[0]["rank"] == 1
    assert ranking[0]["rank_low"] == ranking[0]["rank_high"] == 1  # first in every resample
    assert ranking[0]["theta_low"] > max(r["theta_high"] for r in ranking[1:])
    assert sum(r["theta"] for r in ranking) == pytest.approx(0, abs=1e-9) and bt["bootstrap"] == 300
    assert main(["score", str(out), str(path), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | S3 dora × sft | +" in text and "Bradley–Terry ranking" in text


def test_the_bradley_terry_fit_is_the_maximum_likelihood():
    """Without regularization choix's ILSR reaches the Bradley–Terry likelihood's maximum (ties as half a win
    each): the same strengths as maximising it with scipy."""
    rng = np.random.default_rng(5)
    true = np.array([0.8, 0.0, -0.3, -0.5])
    outcomes = []
    for _ in range(300):
        i, j = rng.choice(4, 2, replace=False)
        p = 1 / (1 + math.exp(true[j] - true[i]))
        outcomes.append((int(i), int(j), 0.5 if rng.random() < 0.15 else float(rng.random() < p)))

    def nll(theta):
        return -sum(r * (theta[i] - np.logaddexp(theta[i], theta[j])) + (1 - r) * (
            theta[j] - np.logaddexp(theta[i], theta[j])) for i, j, r in outcomes)

    best = optimize.minimize(nll, np.zeros(4), method="BFGS").x
    assert _bt_fit(4, outcomes, alpha=0.0) == pytest.approx(best - best.mean(), abs=1e-4)
    # the regularized fit (the default) stays close to it with this much data, and ranks alike
    regular = _bt_fit(4, outcomes)
    assert np.argsort(regular).tolist() == np.argsort(best).tolist() and BT_ALPHA > 0
    assert bradley_terry(2, [(0, 1, 1.0)] * 5, n_boot=20)[0]["theta"] > 1  # always won: finite, first


def test_a_filled_items_csv_scores_like_the_page(runs, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--n", "12", "--out", str(out)]) == 0
    key = read_key(out / "key.json")
    raw = (out / "items.csv").read_text(encoding="utf-8-sig")
    table = list(csv.reader(io.StringIO(raw)))
    words = ["a", "B", "Tie", "both bad", "A가 더 좋음", "B가 더 좋음", "비슷함", "둘 다 나쁨", "", "BOTH_BAD", "b", " A "]
    for row, word in zip(table[1:], words):
        row[4] = word
    with open(tmp_path / "items-lee.csv", "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows(table)
    found = read_judgments(tmp_path / "items-lee.csv", key)
    assert [j["judgment"] for j in found] == ["A", "B", "tie", "both_bad", "A", "B", "tie", "both_bad", "both_bad",
                                              "B", "A"]
    assert {j["judge"] for j in found} == {"items-lee"} and found[0]["where"].endswith("items-lee.csv: line 2")
    labels = {j["item"]: j["judgment"] for j in found}
    counts = expected_record(key, labels)
    (pair,) = score(key, found, n_boot=0)["pairs"]
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == tuple(counts.values())
    # Excel in Korean saves CSV as CP949: read as well
    (tmp_path / "cp949.csv").write_bytes("item,judgment,comment\n1,비슷함,좋아요\n".encode("cp949"))
    assert [(j["judgment"], j["comment"]) for j in read_judgments(tmp_path / "cp949.csv", key)] == [("tie", "좋아요")]


@pytest.mark.parametrize("rows, header, message", [
    ([["1", "A", "kim", ""], ["31", "B", "kim", ""]], None, "line 3: field item: '31' is not an item of this "
                                                           "export (1 to 30)"),
    ([["x", "A", "kim", ""]], None, "line 2: field item: 'x' is not an item"),
    ([["1", "A", "kim", ""], ["2", "better", "kim", ""]], None, "line 3: field judgment: 'better'; use A, B, tie "
                                                                  "or both_bad"),
    ([["1", "A", "kim", "", "0123456789ab"]], ("item", "judgment", "judge", "comment", "export"),
     "line 2: field export: '0123456789ab' is another export's"),
    ([["1", "A"]], ("question", "answer"), "line 1: no item and judgment columns"),
    ([["1", "A", "kim", 'multi\nline "comment"'], ["1", "B", "kim", ""]], None,
     "line 4: item 1 judged twice by 'kim' (first at "),
])
def test_bad_csv_lines_name_the_file_line_and_field(runs, tmp_path, rows, header, message):
    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    key = read_key(out / "key.json")
    path = write_csv(tmp_path / "j.csv", rows, header or ("item", "judgment", "judge", "comment"))
    with pytest.raises(SllmxError) as caught:
        score(key, read_judgments(path, key))
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_judges_who_share_out_the_items_are_counted_once_each(runs, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--n", "10", "--out", str(out)]) == 0
    capsys.readouterr()
    key = read_key(out / "key.json")
    first = write_csv(tmp_path / "a.csv", [[n, "A", "kim", ""] for n in range(1, 6)])
    second = write_csv(tmp_path / "b.csv", [[n, "tie", "lee", ""] for n in range(6, 10)])  # item 10 not judged
    assert main(["score", str(out), str(first), str(second), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items_judged"] == 9 and result["items_not_judged"] == 1 and result["judges"] == ["kim", "lee"]
    assert result["agreement"]["kappa"] is None and result["agreement"]["reason"] == "no item was judged by every judge"
    (pair,) = result["pairs"]
    wins = sum(it["A"] == "S1" for it in key["items"][:5])
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == (wins, 5 - wins, 4, 0)
    assert main(["score", str(out), str(first), str(second)]) == 0
    assert "Cohen's kappa not defined: no item was judged by every judge" in capsys.readouterr().out


def test_a_key_that_is_not_a_key_is_refused(tmp_path):
    (tmp_path / "key.json").write_text('{"seed": 0}')
    with pytest.raises(SllmxError, match="key.json: not an sllmx.abtest key"):
        read_key(tmp_path / "key.json")
    with pytest.raises(SllmxError, match="no judgments"):
        score({"systems": [], "items": []}, [])


# -- the page in a real browser -----------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _browser_missing() -> str:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return ("needs Debian's Chromium and its driver (apt-get install chromium chromium-driver: /usr/bin/chromium, "
                "/usr/bin/chromedriver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    return ""


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by Selenium through Debian's chromedriver (Selenium Manager downloads nothing);
    downloads go to ``tmp_path / "downloads"``."""
    if _browser_missing():
        pytest.skip(_browser_missing())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def test_a_scripted_judge_uses_the_page_in_headless_chromium(runs, tmp_path, browser):
    from selenium.webdriver.common.by import By

    out = tmp_path / "study"
    assert main(["export", str(runs[0]), str(runs[1]), "--out", str(out), "--seed", "7"]) == 0
    key = read_key(out / "key.json")
    browser.get((out / "index.html").as_uri())
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    assert browser.title == "Blind A/B evaluation" and find("#progress").text == "0 of 30 judged"
    find("#lang").click()  # to Korean
    assert find("#save").text == "평가 저장 (CSV)" and find("#progress").text == "30개 중 0개 평가함"
    assert find("label[for=judge]").text == "평가자 이름" and find("#item-1 legend").text == "어느 답변이 더 나은가요?"
    assert browser.execute_script("return document.documentElement.lang") == "ko"

    def choose(n):
        """The judge reads both answers off the page and clicks the radio its rule picks."""
        a = find(f"#answer-{n}-A .text").get_attribute("textContent")
        b = find(f"#answer-{n}-B .text").get_attribute("textContent")
        label = longer_valid_json_judge(a, b)
        radio = find(f"#j-{n}-{label}")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", radio)
        radio.click()
        return label

    chosen = {n: choose(n) for n in range(1, 16)}
    comment = find("#c-3")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", comment)
    comment.send_keys('JSON이 더 깁니다, "따옴표" <b>')
    assert find("#progress").text == "30개 중 15개 평가함"
    browser.refresh()  # the choices survive a reload (localStorage), and so does the language
    assert find("#progress").text == "30개 중 15개 평가함" and find("#j-1-" + chosen[1]).is_selected()
    assert find("#c-3").get_attribute("value") == 'JSON이 더 깁니다, "따옴표" <b>'
    chosen.update({n: choose(n) for n in range(16, N + 1)})
    assert find("#progress").text == "30개 중 30개 평가함"
    find("#lang").click()  # back to English
    assert find("#j-1-A + span").text == "A is better" and find("#progress").text == "30 of 30 judged"
    find("#save").click()  # no name yet: asked for one, nothing saved
    assert find("#status").text == "Enter your name before saving." and not list(browser.downloads.iterdir())
    find("#judge").send_keys("kim 판정")
    find("#save").click()
    target = browser.downloads / "judgments-kim_판정.csv"
    deadline = time.monotonic() + 20
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), list(browser.downloads.iterdir())
    assert find("#status").text == "Saved judgments-kim_판정.csv (30 of 30 judged)."
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    raw = target.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(table[0]) == ["item", "judgment", "judge", "comment", "export"] and len(table) == N
    assert {r["judge"] for r in table} == {"kim 판정"} and table[2]["comment"] == 'JSON이 더 깁니다, "따옴표" <b>'
    assert {int(r["item"]): r["judgment"] for r in table} == chosen
    # the judge's rule applied to the answers the key names gives the same record as score's
    labels = {n: longer_valid_json_judge(*pair) for n, pair in answers_of(key, [first_answer, second_answer]).items()}
    assert labels == chosen
    counts = expected_record(key, labels)
    (pair,) = score(key, read_judgments(target, key))["pairs"]
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == tuple(counts.values())
    assert pair["win_rate"] == counts["win"] / (counts["win"] + counts["loss"])


def test_docs_and_readme_describe_the_command():
    doc = (ROOT / "docs" / "abtest.md").read_text(encoding="utf-8")
    for needle in ("python -m sllmx.abtest export", "python -m sllmx.abtest score", "key.json", "Wilson",
                   "Cohen", "Fleiss", "Bradley", "0.49", "0.81"):
        assert needle in doc, needle
    assert "docs/abtest.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- a local model as a judge ------------------------------------------------------------------------------------

def test_the_model_judge_asks_both_orders_and_calls_a_flip_a_tie(runs, tmp_path):
    from sllmx.ab_judge import PROMPT, preference, verdict

    assert main(["export", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "s"), "--n", "4", "--seed", "3"]) == 0
    from sllmx.ab_judge import read_items

    _, items = read_items(tmp_path / "s" / "items.csv")
    seen = []

    def longer_first(prompts, replies):
        """A fake model: log p(reply) is 1 for the letter of the longer answer, 0 for the other; records prompts."""
        out = []
        for messages, reply in zip(prompts, replies):
            seen.append(messages[-1]["content"])
            text = messages[-1]["content"]
            first = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
            second = text.split("\n\nAnswer B:\n", 1)[1].split("\n\nWhich answer", 1)[0]
            better = "A" if len(first) >= len(second) else "B"
            out.append(1.0 if reply[0]["content"] == better else 0.0)
        return out

    margins = preference(longer_first, items)
    for it, (m1, m2) in zip(items, margins):  # a consistent preference: the same answer in both orders
        assert len(it["answer_A"]) != len(it["answer_B"])
        assert verdict(m1, m2) == ("A" if len(it["answer_A"]) > len(it["answer_B"]) else "B")
    # both orders of every item were asked, each with the question and both answers
    assert len(seen) == 2 * 2 * len(items)
    it = items[0]
    assert PROMPT.format(question=it["question"], first=it["answer_A"], second=it["answer_B"]) in seen
    assert PROMPT.format(question=it["question"], first=it["answer_B"], second=it["answer_A"]) in seen
    position_biased = preference(lambda p, r: [1.0 if x[0]["content"] == "A" else 0.0 for x in r], items)
    assert {verdict(*m) for m in position_biased} == {"tie"}  # always "the first one": every item a tie


def test_a_tiny_model_judges_an_export_in_the_pages_format(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["export", str(runs[0]), str(runs[1]), "--out", str(out), "--n", "5"]) == 0
    capsys.readouterr()
    assert main(["judge", str(out), "model=tiny", f"cache_dir={tmp_path / 'cache'}", "--name", "tiny"]) == 0
    written = out / "judgments-tiny.csv"
    key = read_key(out / "key.json")
    judged = read_judgments(written, key)  # the scorer reads it like a person's file
    assert [j["item"] for j in judged] == [1, 2, 3, 4, 5] and {j["judge"] for j in judged} == {"tiny"}
    assert all(j["judgment"] in ("A", "B", "tie") and j["comment"].startswith("margins ") for j in judged)
    # the tiny test model prefers whichever answer comes first, in both orders: every item a tie (docs/abtest.md)
    assert {j["judgment"] for j in judged} == {"tie"}
    before = written.read_bytes()
    with pytest.raises(SystemExit) as stop:  # nothing is overwritten
        main(["judge", str(out), "model=tiny", f"cache_dir={tmp_path / 'cache'}", "--name", "tiny"])
    assert stop.value.code == 2 and written.read_bytes() == before
    assert "judgments-tiny.csv: the file exists" in capsys.readouterr().err


def test_the_judge_reads_the_answers_as_exported_not_as_spreadsheet_cells(tmp_path):
    from sllmx.ab_judge import read_items
    from sllmx.ab_page import render_items_csv

    items = [{"item": 1, "question": "=1+1?", "answer_A": "- 환불 가능", "answer_B": "'quoted'", "reference": None}]
    (tmp_path / "items.csv").write_text(render_items_csv(items, "x"), encoding="utf-8")
    assert "'- 환불 가능" in (tmp_path / "items.csv").read_text(encoding="utf-8-sig")  # the spreadsheet's cell
    (_, (row,)) = read_items(tmp_path / "items.csv")
    assert (row["question"], row["answer_A"], row["answer_B"]) == ("=1+1?", "- 환불 가능", "'quoted'")
