"""Data-quality checks: duplicates (exact, MinHash near), leakage-free splits, leakage, PII in the
pipeline, lengths, the report in run.json, and ``python -m sllmx.data check``."""

import csv
import json
import random
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from sllmx.data.holdout import hold_out
from sllmx.data.pipeline import load_splits
from sllmx.data.checks import row_text
from sllmx.data.dedup import clusters, find_duplicates, find_shared, jaccard, normalize, shingles
from sllmx.data.lengths import length_report, stats
from sllmx.data.holdout import hold_out_groups
from sllmx.errors import SllmxError
from sllmx.interfaces import LAYOUT_PROMPT_COMPLETION
from sllmx.plugins import registry
from sllmx_plugins.files import FilesDataConfig
from tests.common import FAST_RUN, ROOT, SHARED_DATA, compose_config

CHATBOT = SHARED_DATA / "ko_chatbot" / "ChatbotData.csv"
needs_chatbot = pytest.mark.skipif(not CHATBOT.exists(), reason=f"{CHATBOT} is absent (the shared datasets)")
SFT = SimpleNamespace(name="sft", layouts=[LAYOUT_PROMPT_COMPLETION])


@pytest.fixture(scope="module")
def reg():
    return registry()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def distinct_rows(n, offset=0):
    """Rows with no near duplicates among them (different words, not just different numbers)."""
    words = ["사과", "바나나", "포도", "수박", "딸기", "참외", "복숭아", "자두", "귤", "배", "감", "밤", "호두",
             "잣", "콩", "팥", "쌀", "보리", "밀", "옥수수", "감자", "고구마", "당근", "무", "배추", "상추", "오이",
             "호박", "가지", "고추", "마늘", "양파", "파", "생강", "버섯", "두부", "김치", "국수", "라면", "빵"]
    rng = random.Random(offset)
    return [{"prompt": f"{' '.join(rng.sample(words, 6))} 이야기 {i + offset}",
             "completion": f"{' '.join(rng.sample(words, 6))}"} for i in range(n)]


# ---------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------


def test_normalize_folds_unicode_case_and_whitespace():
    assert normalize("  ＨＥＬＬＯ\u3000 World\n") == "hello world"  # full-width letters and space (NFKC)
    assert normalize("Ｃａｆé") == normalize("cafe\u0301")  # composed and decomposed é


def test_exact_and_near_duplicates_point_at_the_earliest_row():
    texts = ["오늘 날씨가 정말 좋네요 산책 갈까요", "완전히 다른 문장입니다", "오늘 날씨가 정말 좋네요 산책 갈까요!",
             "OK   오늘 날씨가 정말 좋네요 산책 갈까요", "완전히  다른 문장입니다"]
    pairs = {(p.first, p.dup, p.kind) for p in find_duplicates(texts, 0.8)}
    assert (1, 4, "exact") in pairs                      # whitespace differs only
    near = [p for p in find_duplicates(texts, 0.8) if p.kind == "near"]
    assert {(p.first, p.dup) for p in near} == {(0, 2), (0, 3)}
    for p in near:  # the reported similarity is the true Jaccard of the 3-gram sets
        assert p.similarity == pytest.approx(jaccard(shingles(texts[p.first]), shingles(texts[p.dup])))
        assert p.similarity >= 0.8
    assert all(p.kind == "exact" for p in find_duplicates(texts, None))


def test_jaccard_of_character_trigrams_by_hand():
    a, b = shingles("abcd"), shingles("abce")  # {abc, bcd} and {abc, bce}
    assert a == {"abc", "bcd"} and jaccard(a, b) == pytest.approx(1 / 3)
    assert shingles("ab") == {"ab"} and shingles("") == set()


def test_find_shared_and_clusters():
    train = ["하나 둘 셋 넷 다섯 여섯", "일곱 여덟 아홉 열 열하나", "전혀 관계없는 문장"]
    dev = ["일곱 여덟 아홉 열 열하나", "하나 둘 셋 넷 다섯 여섯 일곱", "새로운 문장"]
    pairs = find_shared(train, dev, 0.6)
    assert [(p.first, p.dup, p.kind) for p in pairs] == [(1, 0, "exact"), (0, 1, "near")]
    assert clusters(5, pairs) == [[0, 1], [2], [3], [4]]


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(["a b c d", "a b c e"], 1.5)
    from omegaconf import OmegaConf

    from sllmx.config import DataConfig
    from sllmx.validate import check_node

    def data(**values):
        return check_node("data", OmegaConf.merge(OmegaConf.structured(DataConfig), values), DataConfig)

    assert data(near_dup_threshold=0) == "data.near_dup_threshold=0.0: must be in (0, 1], or null"
    assert data(leakage="sometimes") == "data.leakage=sometimes: use one of error, drop, report, off"


# ---------------------------------------------------------------------------
# leakage-free, stratified hold-out
# ---------------------------------------------------------------------------


def test_one_row_groups_give_the_plain_seeded_permutation():
    perm = list(range(50))
    random.Random(7).shuffle(perm)
    train, dev, test = hold_out(50, 7, 0.1, 0.2, None)
    assert test == sorted(perm[:5]) and dev == sorted(perm[5:15]) and train == sorted(perm[15:])


def test_groups_never_straddle_splits_and_strata_keep_proportions():
    rng = random.Random(0)
    groups, row = [], 0
    for _ in range(300):
        size = rng.choice([1, 1, 1, 2, 3])
        groups.append(list(range(row, row + size)))
        row += size
    strata = {g[0]: ("a" if i % 4 else "b") for i, g in enumerate(groups)}
    for g in groups:
        for r in g:
            strata[r] = strata[g[0]]
    train, dev, test = hold_out_groups(groups, 3, 0.2, 0.1, None, strata)
    where = {r: s for s, rows in (("train", train), ("dev", dev), ("test", test)) for r in rows}
    assert len(where) == row
    assert all(len({where[r] for r in g}) == 1 for g in groups)
    share = lambda rows: Counter(strata[r] for r in rows)["b"] / len(rows)  # noqa: E731
    assert abs(share(test) - share(train)) < 0.05 and abs(share(dev) - share(train)) < 0.07
    assert abs(len(test) - 0.2 * row) <= 3


@needs_chatbot
def test_chatbot_data_duplicates_and_a_leakage_free_split(reg):
    rows = list(csv.DictReader(CHATBOT.open(encoding="utf-8")))
    full = [r["Q"] + "\n" + r["A"] for r in rows]
    pairs = find_duplicates(full, 0.8)
    exact = sum(n - 1 for n in Counter(normalize(t) for t in full).values())
    assert sum(p.kind == "exact" for p in pairs) == exact == 73
    near = [p for p in pairs if p.kind == "near"]
    assert len(near) >= 100
    assert all(jaccard(shingles(full[p.first]), shingles(full[p.dup])) >= 0.8 for p in near)

    cfg = FilesDataConfig(path=str(CHATBOT), format="prompt_completion", columns={"prompt": "Q", "completion": "A"},
                          dev_fraction=0.1, test_fraction=0.1, max_dev_rows=None, duplicates="drop",
                          leakage="error", stratify="label")
    splits = load_splits(cfg, reg, SFT)  # leakage=error: it would raise on any shared row
    report = splits.report
    assert report.duplicates["train"]["exact"] == 73 and report.duplicates["train"]["dropped"] == 73 + len(near)
    assert all(d[k] == 0 for d in report.leakage["pairs"].values() for k in ("exact", "near", "exact_prompt",
                                                                           "near_prompt"))
    assert report.labels["column"] == "label" and set(report.labels) == {"column", "train", "dev", "test"}
    # the check can fail: a plain seeded split of the same rows (no groups) shares prompts between splits
    train, _, test = hold_out(len(rows), 0, 0.1, 0.1, None)
    shared = find_shared([rows[i]["Q"] for i in test], [rows[i]["Q"] for i in train], 0.8)
    assert len(shared) > 10


# ---------------------------------------------------------------------------
# leakage, PII and the report through the pipeline
# ---------------------------------------------------------------------------


def test_a_dev_file_sharing_rows_with_train_stops_naming_the_lines(tmp_path, reg):
    train = distinct_rows(30)
    dev = distinct_rows(8, offset=100) + [train[4], {**train[9], "completion": "다른 답"}]
    cfg = dict(path=write_jsonl(tmp_path / "train.jsonl", train), dev=write_jsonl(tmp_path / "dev.jsonl", dev))
    with pytest.raises(SllmxError) as exc:
        load_splits(FilesDataConfig(**cfg), reg, SFT)
    msg = str(exc.value)
    assert msg.startswith("data leakage between splits: train-dev: 2 rows (exact 1, near 0; by prompt: exact 2")
    assert "train.jsonl, line 5 ~ dev " in msg and "dev.jsonl, line 9 (prompt + response, exact)" in msg
    assert "train.jsonl, line 10 ~ dev " in msg and "dev.jsonl, line 10 (prompt, exact)" in msg
    assert "data.leakage=drop" in msg
    dropped = load_splits(FilesDataConfig(**cfg, leakage="drop"), reg, SFT)
    assert len(dropped.train) == 28 and len(dropped.dev) == 10
    assert dropped.report.leakage["dropped"] == 2
    prompts = {ex["prompt"][-1]["content"] for ex in dropped.train}
    assert train[4]["prompt"] not in prompts and train[9]["prompt"] not in prompts
    reported = load_splits(FilesDataConfig(**cfg, leakage="report"), reg, SFT)
    assert len(reported.train) == 30 and any("leakage" in w for w in reported.report.warnings)


def test_pii_is_masked_dropped_or_reported_in_the_examples(tmp_path, reg):
    rows = distinct_rows(20)
    rows[3]["prompt"] += " 제 번호는 010-1234-5678이고 메일은 kim.minsu@example.co.kr입니다"
    rows[7]["completion"] += " 서버 주소는 192.168.0.12 입니다"
    rows[8]["prompt"] += " 가격은 25,000원이고 2024년 3월 15일에 3개 샀어요"  # numbers, no PII
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    masked = load_splits(FilesDataConfig(path=path, pii="mask", dev_fraction=0.2, checks=True), reg, SFT)
    texts = [m["content"] for split in (masked.train, masked.dev) for ex in split
             for m in ex["prompt"] + ex["completion"]]
    joined = "\n".join(texts)
    assert "<PHONE>" in joined and "<EMAIL>" in joined and "<IP>" in joined
    assert "010-1234-5678" not in joined and "example.co.kr" not in joined and "192.168.0.12" not in joined
    assert "25,000원이고 2024년 3월 15일에 3개" in joined
    found = {k: v for split in masked.report.pii.values() for k, v in split["by_type"].items()}
    assert found == {"EMAIL": 1, "IP": 1, "PHONE": 1}
    plain = load_splits(FilesDataConfig(path=path, pii="report", dev_fraction=0.2), reg, SFT)
    assert masked.provenance["train"]["sha256"] != plain.provenance["train"]["sha256"] or \
        masked.provenance["dev"]["sha256"] != plain.provenance["dev"]["sha256"]
    assert any("personal information" in w for w in plain.report.warnings)
    dropped = load_splits(FilesDataConfig(path=path, pii="drop", dev_fraction=0.2), reg, SFT)
    assert len(dropped.train) + len(dropped.dev) == 18


def test_same_data_gives_the_same_hash_and_a_change_another(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", distinct_rows(20))
    a = load_splits(FilesDataConfig(path=path), reg, SFT)
    b = load_splits(FilesDataConfig(path=path), reg, SFT)
    c = load_splits(FilesDataConfig(path=path, split_seed=1), reg, SFT)
    assert a.provenance == b.provenance and a.provenance["dev"]["sha256"] != c.provenance["dev"]["sha256"]


def test_row_text_of_each_layout():
    u = lambda t: {"role": "user", "content": t}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    sysm = {"role": "system", "content": "You are helpful"}
    assert row_text([{"messages": [sysm, u("q1"), a("a1"), u("q2"), a("a2")]}]) == ("q1\na1\nq2", "q1\na1\nq2\na2")
    assert row_text([{"prompt": [sysm, u("q")], "completion": [a("c")]}]) == ("q", "q\nc")
    assert row_text([{"prompt": [u("q")], "chosen": [a("c")], "rejected": [a("r")]}]) == ("q", "q\nc\nr")
    pair = [{"prompt": "q", "completion": "c", "label": True}, {"prompt": "q", "completion": "r", "label": False}]
    assert row_text(pair) == ("q", "q\nc\nr")


class CharTokenizer:
    """One token per character; the chat template joins the contents with newlines."""

    def apply_chat_template(self, messages, tokenize=False):
        return "\n".join(m["content"] for m in messages)

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


def test_length_statistics_and_the_max_length_warnings():
    examples = [{"prompt": [{"role": "user", "content": "x" * n}], "completion": [{"role": "assistant", "content": "y"}]}
                for n in range(1, 101)]  # lengths 3..102 (prompt + newline + answer)
    s = stats(list(range(3, 103)), 100)
    assert (s["min"], s["median"], s["max"], s["truncated"]) == (3, 52.5, 102, 2)
    report, warnings = length_report({"train": examples}, CharTokenizer(), 64)
    assert report["by_split"]["train"]["max"] == 102 and report["truncated"] == 38
    assert report["suggested_max_length"] == 112  # p99 = 101.01, rounded up to a multiple of 16
    assert warnings and "truncates 38 of 100" in warnings[0]
    _, warnings = length_report({"train": examples}, CharTokenizer(), 512)
    assert warnings and "more than twice the train p99" in warnings[0]
    assert length_report({"train": examples}, CharTokenizer(), 128)[1] == []


# ---------------------------------------------------------------------------
# runs and the command line
# ---------------------------------------------------------------------------


def test_a_leaking_run_stops_and_trains_with_leakage_drop(tmp_path):
    from sllmx.records import RunRecord
    from sllmx.run import run

    train = distinct_rows(24)
    dev = distinct_rows(5, offset=100) + train[:2]
    files = ["data=files", f"data.path={write_jsonl(tmp_path / 'train.jsonl', train)}",
             f"data.dev={write_jsonl(tmp_path / 'dev.jsonl', dev)}"]
    with pytest.raises(SllmxError, match=r"train-dev: 2 rows .*train.jsonl, line 1 ~ dev"):
        run(compose_config([*FAST_RUN, *files], tmp_path / "stopped", tmp_path / "cache"))
    assert not (tmp_path / "stopped").exists()  # nothing written
    record = run(compose_config([*FAST_RUN, *files, "data.leakage=drop"], tmp_path / "run", tmp_path / "cache"))
    assert record.status == "COMPLETE"
    saved = RunRecord.read(tmp_path / "run" / "run.json")
    assert saved.data_checks["leakage"]["dropped"] == 2 and saved.artifacts["data_check"] == "data_check.json"
    report = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert report["splits"]["train"]["rows"] == 22 and report["lengths"]["by_split"]["train"]["examples"] == 22
    assert saved.data["splits"]["train"]["sha256"]


def test_check_command_reports_and_exits_1_on_leakage(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(24))
    dev = write_jsonl(tmp_path / "dev.jsonl", distinct_rows(5, offset=100) + distinct_rows(24)[:1])
    cmd = [sys.executable, "-m", "sllmx.data", "check", train, "--dev", dev, "model=tiny",
           f"cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "report.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "leakage train-dev: exact 1" in proc.stdout and "a run with this config would stop" in proc.stdout
    assert "tokens in train:" in proc.stdout and "suggested max_length" in proc.stdout
    assert json.loads((tmp_path / "report.json").read_text())["leakage"]["pairs"]["train-dev"]["exact"] == 1
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 2 and "the file exists" in again.stderr and "Traceback" not in again.stderr
    bad = subprocess.run([sys.executable, "-m", "sllmx.data", "check", train, "data.leakage=maybe", "data.lengths=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("sllmx: error: data.leakage=maybe")
