"""Data formats, the ``files`` source, the pipeline (sllmx.data) and the data presets.

Fast and offline: fixtures are tiny files written to tmp_path.  The real-data tests at the
end read ``../shared/data`` (or ``$SLLMX_SHARED_DATA``) and skip when it is absent.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sllmx.data.holdout import hold_out
from sllmx.data.pipeline import Splits, load_splits, sha256_of
from sllmx.errors import SllmxError
from sllmx.interfaces import (
    LAYOUT_MESSAGES,
    LAYOUT_PREFERENCE,
    LAYOUT_PROMPT_COMPLETION,
    LAYOUT_TEXT,
    LAYOUT_UNPAIRED,
    FieldError,
)
from sllmx.plugins import registry
from tests.common import FAST, compose_config
from sllmx.data.readers import read_file
from sllmx_plugins.files import FilesDataConfig, FilesSource

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLLMX_SHARED_DATA") or REPO / ".." / "shared" / "data").resolve()

SFT = SimpleNamespace(name="sft", layouts=[LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT])
DPO = SimpleNamespace(name="dpo", layouts=[LAYOUT_PREFERENCE])
KTO = SimpleNamespace(name="kto", layouts=[LAYOUT_UNPAIRED])


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


@pytest.fixture(scope="module")
def reg():
    return registry()


def fmt(reg, name):
    return reg.get("format", name)


def write_jsonl(path: Path, rows, blank_after=None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            if blank_after is not None and i == blank_after:
                f.write("\n")
    return path


def cfg(path, **kw) -> FilesDataConfig:
    """A ``files`` data config; the data-quality checks are off unless asked for (tests/test_checks.py
    covers them), since these tests use small files of repeated rows."""
    return FilesDataConfig(path=str(path), **{"checks": False, **kw})


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_builtin_source_and_formats_are_registered(reg):
    assert reg.names("format") == sorted(["messages", "alpaca", "prompt_completion", "preference",
                                          "sharegpt_preference", "kto", "kto_messages", "text", "hh_rlhf",
                                          "summarization"])
    assert isinstance(reg.get("data", "files"), FilesSource)
    assert reg.get("data", "files").config is FilesDataConfig
    assert FilesDataConfig.__dataclass_fields__["path"].metadata["help"]
    assert FilesDataConfig().source == "files"
    for name in reg.names("format"):
        f = fmt(reg, name)
        assert f.columns and f.layouts and f.help


# ---------------------------------------------------------------------------
# Formats: every layout each one gives
# ---------------------------------------------------------------------------


def test_messages_format_layouts_and_system(reg):
    f = fmt(reg, "messages")
    row = {"messages": [U("hi"), A("hello"), U("2+2?"), A("4")]}
    assert f.convert(row, LAYOUT_MESSAGES) == [{"messages": [U("hi"), A("hello"), U("2+2?"), A("4")]}]
    assert f.convert(row, LAYOUT_PROMPT_COMPLETION, "Be brief.") == [
        {"prompt": [S("Be brief."), U("hi"), A("hello"), U("2+2?")], "completion": [A("4")]}]
    # the row's own system message wins over data.system (never two system messages)
    own = {"messages": [S("own"), U("q"), A("a")]}
    assert f.convert(own, LAYOUT_MESSAGES, "cfg")[0]["messages"][0] == S("own")
    # extra keys of a message are dropped
    extra = {"messages": [{"role": "user", "content": "q", "name": None}, A("a")]}
    assert f.convert(extra, LAYOUT_MESSAGES) == [{"messages": [U("q"), A("a")]}]


@pytest.mark.parametrize("row, field, words", [
    ({}, "messages", "missing"),
    ({"messages": "hi"}, "messages", "list of messages"),
    ({"messages": []}, "messages", "empty"),
    ({"messages": [U("q"), U("a")]}, "messages", "last message must be from the assistant"),
    ({"messages": [A("a")]}, "messages", "user message before"),
    ({"messages": [U("q"), {"role": "bot", "content": "a"}]}, "messages", "'bot' is not one of"),
    ({"messages": [U("q"), {"role": "assistant", "content": 3}]}, "messages", "must be a string"),
    ({"messages": [U("q"), A("  ")]}, "messages", "empty"),
    ({"messages": [U("q"), "a"]}, "messages", "must be an object"),
])
def test_messages_format_refuses_bad_rows(reg, row, field, words):
    with pytest.raises(FieldError) as err:
        fmt(reg, "messages").convert(row, LAYOUT_MESSAGES)
    assert err.value.field == field and words in str(err.value)


def test_alpaca_format(reg):
    f = fmt(reg, "alpaca")
    assert f.layouts == (LAYOUT_PROMPT_COMPLETION,)
    assert f.convert({"instruction": "Add.", "input": "2 and 3", "output": "5"}, LAYOUT_PROMPT_COMPLETION) == [
        {"prompt": [U("Add.\n\n2 and 3")], "completion": [A("5")]}]
    for no_input in ({"instruction": "Hi.", "output": "Hello."}, {"instruction": "Hi.", "input": "", "output": "Hello."},
                     {"instruction": "Hi.", "input": None, "output": "Hello."}):
        assert f.convert(no_input, LAYOUT_PROMPT_COMPLETION, "sys") == [
            {"prompt": [S("sys"), U("Hi.")], "completion": [A("Hello.")]}]
    with pytest.raises(FieldError) as err:
        f.convert({"instruction": "Hi.", "output": ""}, LAYOUT_PROMPT_COMPLETION)
    assert (err.value.field, str(err.value)) == ("output", "is empty")
    with pytest.raises(FieldError) as err:
        f.convert({"instruction": "Hi.", "input": 7, "output": "x"}, LAYOUT_PROMPT_COMPLETION)
    assert err.value.field == "input" and "must be a string, got a number" in str(err.value)


def test_prompt_completion_format_strings_and_messages(reg):
    f = fmt(reg, "prompt_completion")
    assert f.convert({"prompt": "Q", "completion": "A"}, LAYOUT_PROMPT_COMPLETION) == [
        {"prompt": [U("Q")], "completion": [A("A")]}]
    conv = {"prompt": [S("s"), U("q1"), A("a1"), U("q2")], "completion": [A("a2")]}
    assert f.convert(conv, LAYOUT_PROMPT_COMPLETION, "ignored: row has its own") == [conv]
    with pytest.raises(FieldError) as err:
        f.convert({"prompt": "Q", "completion": 5}, LAYOUT_PROMPT_COMPLETION)
    assert err.value.field == "completion" and "string or a list of messages" in str(err.value)
    with pytest.raises(FieldError) as err:
        f.convert({"prompt": "Q", "completion": [U("not an answer")]}, LAYOUT_PROMPT_COMPLETION)
    assert err.value.field == "completion"
    with pytest.raises(ValueError, match="cannot produce layout prompt/chosen/rejected"):
        f.convert({"prompt": "Q", "completion": "A"}, LAYOUT_PREFERENCE)


PAIR = {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}


def test_preference_format_three_layouts(reg):
    f = fmt(reg, "preference")
    assert f.layouts == (LAYOUT_PREFERENCE, LAYOUT_UNPAIRED, LAYOUT_PROMPT_COMPLETION)
    p = [S("sys"), U("Sky colour?")]
    assert f.convert(PAIR, LAYOUT_PREFERENCE, "sys") == [{"prompt": p, "chosen": [A("Blue.")], "rejected": [A("Green.")]}]
    # like trl.data_utils.unpair_preference_dataset: chosen → label True, rejected → label False
    assert f.convert(PAIR, LAYOUT_UNPAIRED, "sys") == [{"prompt": p, "completion": [A("Blue.")], "label": True},
                                                       {"prompt": p, "completion": [A("Green.")], "label": False}]
    assert f.convert(PAIR, LAYOUT_PROMPT_COMPLETION, "sys") == [{"prompt": p, "completion": [A("Blue.")]}]
    conv = {"prompt": [U("q")], "chosen": [A("good")], "rejected": [A("bad")]}
    assert f.convert(conv, LAYOUT_PREFERENCE) == [conv]
    with pytest.raises(FieldError) as err:
        f.convert({"prompt": "q", "chosen": "good"}, LAYOUT_PREFERENCE)
    assert (err.value.field, str(err.value)) == ("rejected", "is missing")


SHAREGPT = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Joke?"}],
            "chosen": {"from": "gpt", "value": "Knock knock."}, "rejected": {"from": "gpt", "value": "No."}}


def test_sharegpt_preference_format(reg):
    f = fmt(reg, "sharegpt_preference")
    prompt = [S("Be kind."), U("Hi"), A("Hello"), U("Joke?")]
    assert f.convert(SHAREGPT, LAYOUT_PREFERENCE, "cfg system loses to the row's") == [
        {"prompt": prompt, "chosen": [A("Knock knock.")], "rejected": [A("No.")]}]
    assert [ex["label"] for ex in f.convert(SHAREGPT, LAYOUT_UNPAIRED)] == [True, False]
    assert f.convert(SHAREGPT, LAYOUT_PROMPT_COMPLETION) == [{"prompt": prompt, "completion": [A("Knock knock.")]}]
    bad_from = dict(SHAREGPT, conversations=[{"from": "user", "value": "Hi"}])
    with pytest.raises(FieldError, match="from 'user' is not one of human, gpt, system"):
        f.convert(bad_from, LAYOUT_PREFERENCE)
    ends_gpt = dict(SHAREGPT, conversations=SHAREGPT["conversations"][:3])
    with pytest.raises(FieldError, match="must end with a human turn"):
        f.convert(ends_gpt, LAYOUT_PREFERENCE)
    empty = dict(SHAREGPT, rejected={"from": "gpt", "value": ""})
    with pytest.raises(FieldError) as err:
        f.convert(empty, LAYOUT_PREFERENCE)
    assert err.value.field == "rejected" and "empty" in str(err.value)


@pytest.mark.parametrize("label, expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), ("1", True), (" 0 ", False),
])
def test_kto_format_labels(reg, label, expected):
    out = fmt(reg, "kto").convert({"prompt": "q", "completion": "a", "label": label}, LAYOUT_UNPAIRED)
    assert out == [{"prompt": [U("q")], "completion": [A("a")], "label": expected}]
    assert type(out[0]["label"]) is bool


@pytest.mark.parametrize("label", ["yes", "maybe", 2, -1, 0.5, "", [True]])
def test_kto_format_refuses_bad_labels(reg, label):
    with pytest.raises(FieldError) as err:
        fmt(reg, "kto").convert({"prompt": "q", "completion": "a", "label": label}, LAYOUT_UNPAIRED)
    assert err.value.field == "label" and "must be true/false" in str(err.value)


def test_kto_messages_format(reg):
    f = fmt(reg, "kto_messages")
    row = {"messages": [U("q1"), A("a1"), U("q2"), A("a2")], "label": False}
    assert f.convert(row, LAYOUT_UNPAIRED, "s") == [
        {"prompt": [S("s"), U("q1"), A("a1"), U("q2")], "completion": [A("a2")], "label": False}]
    with pytest.raises(FieldError) as err:
        f.convert({"messages": [U("q"), A("a")]}, LAYOUT_UNPAIRED)
    assert (err.value.field, str(err.value)) == ("label", "is missing")


def test_text_format(reg):
    f = fmt(reg, "text")
    assert f.convert({"text": "Once upon a time."}, LAYOUT_TEXT, "system is ignored") == [{"text": "Once upon a time."}]
    with pytest.raises(FieldError) as err:
        f.convert({"text": ["a"]}, LAYOUT_TEXT)
    assert err.value.field == "text" and "must be a string, got a list" in str(err.value)


HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How to bake bread?\n\nAssistant: Mix flour and water.",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How to bake bread?\n\nAssistant: Buy it."}


def test_hh_rlhf_format(reg):
    f = fmt(reg, "hh_rlhf")
    prompt = [U("Hi"), A("Hello!"), U("How to bake bread?")]
    assert f.convert(HH, LAYOUT_PREFERENCE) == [
        {"prompt": prompt, "chosen": [A("Mix flour and water.")], "rejected": [A("Buy it.")]}]
    assert f.convert(HH, LAYOUT_UNPAIRED, "s") == [
        {"prompt": [S("s")] + prompt, "completion": [A("Mix flour and water.")], "label": True},
        {"prompt": [S("s")] + prompt, "completion": [A("Buy it.")], "label": False}]
    assert f.convert(HH, LAYOUT_PROMPT_COMPLETION) == [{"prompt": prompt, "completion": [A("Mix flour and water.")]}]
    # responses that start alike still split at the last shared "\n\nAssistant:"
    alike = {"chosen": "\n\nHuman: Q\n\nAssistant: I think yes.", "rejected": "\n\nHuman: Q\n\nAssistant: I think no."}
    assert f.convert(alike, LAYOUT_PREFERENCE)[0]["chosen"] == [A("I think yes.")]
    with pytest.raises(FieldError) as err:
        f.convert({"chosen": "\n\nHuman: Q\n\nAssistant: ", "rejected": "\n\nHuman: Q\n\nAssistant: No."},
                  LAYOUT_PREFERENCE)
    assert err.value.field == "chosen" and "response is empty" in str(err.value)
    with pytest.raises(FieldError, match="share no prompt"):
        f.convert({"chosen": "hello", "rejected": "world"}, LAYOUT_PREFERENCE)


# ---------------------------------------------------------------------------
# The files source: readers, positions, bad files
# ---------------------------------------------------------------------------


ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]


def test_jsonl_and_gz_reader_with_line_numbers(tmp_path):
    plain = write_jsonl(tmp_path / "d.jsonl", ROWS[:3], blank_after=0)
    split = read_file(str(plain))
    assert split.rows == ROWS[:3] and split.origin == str(plain)
    assert [split.line_of(i) for i in range(3)] == ["line 1", "line 3", "line 4"]  # the blank line 2 is skipped
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_file(str(gz)).rows == ROWS
    assert read_file(str(gz), limit=4).rows == ROWS[:4]


def test_json_csv_parquet_readers(tmp_path):
    js = tmp_path / "d.json"
    js.write_text(json.dumps(ROWS[:2]))
    split = read_file(str(js))
    assert split.rows == ROWS[:2] and split.line_of(1) == "item 2"

    cs = tmp_path / "d.csv"
    cs.write_text('\ufeffprompt,completion\nq0,a0\n"multi\nline",a1\n\nq2,a2\n', encoding="utf-8")
    split = read_file(str(cs))
    assert split.rows == [{"prompt": "q0", "completion": "a0"}, {"prompt": "multi\nline", "completion": "a1"},
                          {"prompt": "q2", "completion": "a2"}]
    assert [split.line_of(i) for i in range(3)] == ["row 1 (line 2)", "row 2 (line 3)", "row 3 (line 6)"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), pqf)
    split = read_file(str(pqf), limit=5)
    assert split.rows == ROWS[:5] and split.line_of(4) == "row 5"


def test_max_rows_first_n_or_seeded_sample(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert FilesSource().load(cfg(path, max_rows=3))["train"].rows == ROWS[:3]
    a = FilesSource().load(cfg(path, max_rows=4, sample_seed=1))["train"]
    b = FilesSource().load(cfg(path, max_rows=4, sample_seed=1))["train"]
    assert a.rows == b.rows and len(a.rows) == 4 and a.rows != ROWS[:4]
    assert a.rows == sorted(a.rows, key=ROWS.index)  # file order kept
    assert a.line_of(0) == f"line {ROWS.index(a.rows[0]) + 1}"  # positions follow the sample


def test_files_source_reads_dev_and_test_files(tmp_path):
    tr, dv, te = (write_jsonl(tmp_path / f"{n}.jsonl", ROWS) for n in ("tr", "dv", "te"))
    raw = FilesSource().load(cfg(tr, dev=str(dv), test=str(te), max_rows=2))
    assert [raw[k].origin for k in ("train", "dev", "test")] == [str(tr), str(dv), str(te)]
    assert all(len(raw[k].rows) == 2 for k in raw)
    assert FilesSource().load(cfg(tr))["dev"] is None


def bad_file_cases(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "completion": "a"}\n\n{"prompt": "q", oops}\n')
    (tmp_path / "list.jsonl").write_text('["not", "an", "object"]\n')
    (tmp_path / "multi.json").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "obj.json").write_text('{"rows": []}')
    (tmp_path / "items.json").write_text('[{"a": 1}, 2]')
    (tmp_path / "fields.csv").write_text("prompt,completion\nq,a\nq,a,extra\n")
    (tmp_path / "latin1.csv").write_bytes("prompt,completion\nq,caf\xe9\n".encode("latin-1"))
    (tmp_path / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "x.parquet").write_text("not parquet")
    (tmp_path / "adir").mkdir()
    return [
        ("missing.jsonl", ["data file not found", "missing.jsonl"]),
        ("adir", ["is a directory"]),
        ("bad.jsonl", ["bad.jsonl, line 3: not valid JSON"]),
        ("list.jsonl", ["list.jsonl, line 1: expected a JSON object, got a list"]),
        ("multi.json", ["multi.json, line 2", "name the file .jsonl"]),
        ("obj.json", ["obj.json: expected a JSON array of objects"]),
        ("items.json", ["items.json, item 2: expected a JSON object"]),
        ("fields.csv", ["fields.csv, row 2 (line 3): 3 fields, but the header has 2"]),
        ("latin1.csv", ["cannot read", "latin1.csv", "not UTF-8"]),
        ("corrupt.jsonl.gz", ["cannot read", "corrupt.jsonl.gz"]),
        ("notes.txt", ["notes.txt: unknown file type"]),
        ("x.parquet", ["x.parquet: not a readable Parquet file"]),
    ]


def test_bad_files_give_one_clear_error(tmp_path, reg):
    for name, words in bad_file_cases(tmp_path):
        with pytest.raises(SllmxError) as err:
            load_splits(cfg(tmp_path / name), reg, SFT)
        msg = str(err.value)
        assert "\n" not in msg, msg
        for w in words:
            assert w in msg, (name, msg)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, reg):
    path = write_jsonl(tmp_path / "locked.jsonl", ROWS)
    path.chmod(0)
    try:
        with pytest.raises(SllmxError, match=r"cannot read .*locked\.jsonl: Permission denied"):
            load_splits(cfg(path), reg, SFT)
    finally:
        path.chmod(0o644)


def test_path_not_set(reg):
    from omegaconf import OmegaConf

    with pytest.raises(SllmxError, match=r"^data.path is required: set it on the command line, e.g. data.path=...$"):
        load_splits(OmegaConf.structured(FilesDataConfig), reg, SFT)
    with pytest.raises(SllmxError, match="data.path is not set"):
        load_splits(FilesDataConfig(path=""), reg, SFT)


def test_hub_dataset_ids(monkeypatch, reg):
    import datasets

    def offline(path, name=None, split=None):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SllmxError) as err:
        load_splits(cfg("someone/some-dataset", hub_name="en"), reg, SFT)
    assert "the dataset someone/some-dataset (en), split 'train' could not be loaded" in str(err.value)

    calls = []

    def fake(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(30)] +
                                          [{"prompt": "q", "completion": ""}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    s = load_splits(cfg("someone/some-dataset", hub_split="validation", max_rows=20), reg, SFT)
    assert calls == [("someone/some-dataset", None, "validation")]
    assert (len(s.train), len(s.dev), s.layout) == (18, 2, LAYOUT_PROMPT_COMPLETION)
    with pytest.raises(SllmxError, match=r"^someone/some-dataset, row 31: field 'completion': is empty"):
        load_splits(cfg("someone/some-dataset"), reg, SFT)


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows, expected", [
    ([{"messages": [U("q"), A("a")]}] * 3, "messages"),
    ([{"instruction": "i", "input": "", "output": "o"}] * 3, "alpaca"),
    ([{"prompt": "q", "completion": "a"}] * 3, "prompt_completion"),
    ([{"prompt": "q", "chosen": "c", "rejected": "r"}] * 3, "preference"),  # beats hh_rlhf (2 columns)
    ([SHAREGPT] * 3, "sharegpt_preference"),
    ([{"prompt": "q", "completion": "a", "label": True}] * 3, "kto"),  # beats prompt_completion
    ([{"messages": [U("q"), A("a")], "label": 1}] * 3, "kto_messages"),
    ([{"text": "t", "meta": 1}] * 3, "text"),
    ([HH] * 3, "hh_rlhf"),
])
def test_auto_detects_the_format(tmp_path, reg, rows, expected):
    trainer = SimpleNamespace(name="any", layouts=[LAYOUT_PREFERENCE, LAYOUT_UNPAIRED, LAYOUT_MESSAGES,
                                                   LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT])
    s = load_splits(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), reg, trainer)
    assert s.format == expected
    assert s.layout == fmt(reg, expected).layouts[0]
    assert s.train.column_names == list(s.layout)


def test_auto_detect_failures_list_columns_and_formats(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(SllmxError) as err:
        load_splits(cfg(path), reg, SFT)
    msg = str(err.value)
    assert "columns found: question, answer" in msg and "prompt_completion (prompt, completion)" in msg
    assert "data.format=" in msg and "data.columns=" in msg
    tie = write_jsonl(tmp_path / "t.jsonl", [{"text": "t", "messages": [U("q"), A("a")]}] * 3)
    with pytest.raises(SllmxError, match="fit formats messages and text equally; set data.format="):
        load_splits(cfg(tie), reg, SFT)


def test_column_mapping_csv_q_a(tmp_path, reg):
    path = tmp_path / "chat.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Q", "A"])
        w.writerows([[f"질문 {i}", f"답 {i}"] for i in range(20)])
    s = load_splits(cfg(path, columns={"prompt": "Q", "completion": "A"}), reg, SFT)
    assert (s.format, s.layout) == ("prompt_completion", LAYOUT_PROMPT_COMPLETION)
    assert (len(s.train), len(s.dev)) == (18, 2)
    assert {"prompt": [U("질문 0")], "completion": [A("답 0")]} in s.train.to_list() + s.dev.to_list()
    with pytest.raises(SllmxError) as err:
        load_splits(cfg(path, columns={"prompt": "Q", "completion": "Answer"}), reg, SFT)
    assert str(err.value) == (f"{path}: column 'Answer' (data.columns.completion) is not in the file; "
                              f"columns present: Q, A")


def test_column_mapping_swaps_and_keeps_other_columns(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "answer", "completion": "question", "x": 1}] * 4)
    s = load_splits(cfg(path, format="prompt_completion", columns={"prompt": "completion", "completion": "prompt"}),
                    reg, SFT)
    assert s.train[0] == {"prompt": [U("question")], "completion": [A("answer")]}


def test_layout_mismatch_names_format_file_and_trainer(tmp_path, reg):
    path = write_jsonl(tmp_path / "pc.jsonl", ROWS)
    with pytest.raises(SllmxError) as err:
        load_splits(cfg(path), reg, DPO)
    assert str(err.value) == (f"data format 'prompt_completion' (file {path}) gives prompt/completion, "
                              f"but trainer 'dpo' needs prompt/chosen/rejected")
    # a detected format that the trainer cannot use: the message suggests one that fits both
    kto_like = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": 1}] * 5)
    with pytest.raises(SllmxError, match="needs messages or prompt/completion or text; "
                                         "the columns also fit data.format=prompt_completion"):
        load_splits(cfg(kto_like), reg, SFT)


def test_preference_data_feeds_sft_kto_and_dpo(tmp_path, reg):
    rows = [{"prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    sft = load_splits(cfg(path), reg, SFT)
    assert sft.layout == LAYOUT_PROMPT_COMPLETION and len(sft.train) + len(sft.dev) == 10
    dpo = load_splits(cfg(path), reg, DPO)
    assert dpo.layout == LAYOUT_PREFERENCE and dpo.train.column_names == ["prompt", "chosen", "rejected"]
    kto = load_splits(cfg(path, dev_fraction=0.3), reg, KTO)
    assert kto.layout == LAYOUT_UNPAIRED and (len(kto.train), len(kto.dev)) == (14, 6)
    assert kto.provenance["train"]["rows"] == 14
    # split before unpairing: both rows of a pair are on the same side
    prompts = lambda ds: {ex["prompt"][0]["content"] for ex in ds}  # noqa: E731
    assert not prompts(kto.train) & prompts(kto.dev)
    assert sorted(kto.train["label"]).count(True) == 7


def test_field_errors_name_file_line_and_field(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:3] + [{"prompt": "q"}] + ROWS[3:], blank_after=0)
    with pytest.raises(SllmxError) as err:
        load_splits(cfg(path, dev_fraction=0.2), reg, SFT)
    assert str(err.value).startswith(f"{path}, line 5: field 'completion': is missing")
    cases = [({"prompt": "q", "completion": "   "}, "field 'completion': is empty"),
             ({"prompt": 3, "completion": "a"}, "field 'prompt': must be a string or a list of messages, got a number")]
    for bad, words in cases:
        path = write_jsonl(tmp_path / "e.jsonl", [bad] + ROWS)
        with pytest.raises(SllmxError, match=f"e.jsonl, line 1: {words}"):
            load_splits(cfg(path), reg, SFT)
    csvp = tmp_path / "d.csv"
    csvp.write_text("prompt,completion\nq,a\nq2,\nq3,a3\n")
    with pytest.raises(SllmxError, match=r"d\.csv, row 2 \(line 3\): field 'completion': is empty"):
        load_splits(cfg(csvp, dev_fraction=0.4), reg, SFT)
    kto = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "q", "completion": "a", "label": "maybe"}] * 3)
    with pytest.raises(SllmxError, match=r"k\.jsonl, line 1: field 'label': must be true/false"):
        load_splits(cfg(kto), reg, KTO)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(ROWS + [{"prompt": "q", "completion": ["a"]}]))
    with pytest.raises(SllmxError, match=r"d\.json, item 11: field 'completion': item 0: must be an object"):
        load_splits(cfg(js), reg, SFT)


def test_skip_invalid_counts_rows(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS + [{"prompt": "q", "completion": ""}] * 2)
    s = load_splits(cfg(path, skip_invalid=True, dev_fraction=0.25), reg, SFT)
    total = sum(p["skipped"] for p in s.provenance.values())
    assert total == 2 and len(s.train) + len(s.dev) == 10
    allbad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": ""}] * 6)
    with pytest.raises(SllmxError, match="no usable rows for the train split"):
        load_splits(cfg(allbad, skip_invalid=True), reg, SFT)


def test_zero_rows(tmp_path, reg):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SllmxError, match=f"{empty} has no rows"):
        load_splits(cfg(empty, format="prompt_completion"), reg, SFT)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(SllmxError, match="has no rows"):
        load_splits(cfg(tmp_path / "empty.json"), reg, SFT)
    (tmp_path / "header.csv").write_text("prompt,completion\n")
    with pytest.raises(SllmxError, match="has no rows"):
        load_splits(cfg(tmp_path / "header.csv"), reg, SFT)
    with pytest.raises(SllmxError, match="empty CSV file"):
        (tmp_path / "nothing.csv").write_text("")
        load_splits(cfg(tmp_path / "nothing.csv"), reg, SFT)


def test_dev_and_test_split_seeded_and_disjoint(tmp_path, reg):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(100)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    q = lambda ds: [ex["prompt"][0]["content"] for ex in ds]  # noqa: E731

    a = load_splits(cfg(path, dev_fraction=0.1, test_fraction=0.2, split_seed=3), reg, SFT)
    b = load_splits(cfg(path, dev_fraction=0.1, test_fraction=0.2, split_seed=3), reg, SFT)
    c = load_splits(cfg(path, dev_fraction=0.1, test_fraction=0.2, split_seed=4), reg, SFT)
    assert (len(a.train), len(a.dev), len(a.test)) == (70, 10, 20)
    assert (q(a.train), q(a.dev), q(a.test)) == (q(b.train), q(b.dev), q(b.test))
    assert q(a.dev) != q(c.dev)
    assert not set(q(a.train)) & set(q(a.dev)) and not set(q(a.train)) & set(q(a.test))
    assert not set(q(a.dev)) & set(q(a.test))
    assert sorted(q(a.train) + q(a.dev) + q(a.test)) == sorted(f"q{i}" for i in range(100))
    assert q(a.train) == sorted(q(a.train), key=lambda s: int(s[1:]))  # file order kept
    # test is taken first: changing dev_fraction leaves the test rows alone
    d = load_splits(cfg(path, dev_fraction=0.3, test_fraction=0.2, split_seed=3), reg, SFT)
    assert q(d.test) == q(a.test) and len(d.dev) == 30
    # the dev split is capped at max_dev_rows; the rest stay in train
    e = load_splits(cfg(path, dev_fraction=0.5, max_dev_rows=7), reg, SFT)
    assert (len(e.train), len(e.dev), e.test) == (93, 7, None)
    assert e.provenance["dev"]["origin"] == f"{path} (held out: 7 of 100 rows, split_seed 0)"


def test_split_helper_and_its_limits():
    train, dev, test = hold_out(10, 0, 0.2, 0.1, None)
    assert (len(train), len(dev), len(test)) == (7, 1, 2)
    assert sorted(train + dev + test) == list(range(10))
    assert hold_out(3, 0, 0.0, 0.01, None)[1] != []  # a fraction > 0 holds out at least one row
    with pytest.raises(SllmxError, match="too few"):
        hold_out(2, 0, 0.5, 0.5, None)
    with pytest.raises(SllmxError, match="data.dev_fraction must be at least 0 and below 1, got 1.5"):
        hold_out(10, 0, 0.0, 1.5, None)


def test_dev_and_test_files(tmp_path, reg):
    tr = write_jsonl(tmp_path / "train.jsonl", ROWS)
    dv = write_jsonl(tmp_path / "dev.jsonl", [{"prompt": f"d{i}", "completion": "x"} for i in range(5)])
    te = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "t", "completion": "x"}])
    s = load_splits(cfg(tr, dev=str(dv), test=str(te), max_dev_rows=3), reg, SFT)
    assert (len(s.train), len(s.dev), len(s.test)) == (10, 3, 1)
    assert [ex["prompt"][0]["content"] for ex in s.dev] == ["d0", "d1", "d2"]
    assert {k: v["origin"] for k, v in s.provenance.items()} == {"train": str(tr), "dev": str(dv), "test": str(te)}
    bad_dev = write_jsonl(tmp_path / "bad_dev.jsonl", [{"prompt": "d"}])
    with pytest.raises(SllmxError, match=r"bad_dev\.jsonl, line 1: field 'completion': is missing"):
        load_splits(cfg(tr, dev=str(bad_dev)), reg, SFT)
    with pytest.raises(SllmxError, match="no dev split"):
        load_splits(cfg(tr, dev_fraction=0.0), reg, SFT)


def test_provenance_hashes(tmp_path, reg):
    one = write_jsonl(tmp_path / "one.jsonl", ROWS)
    two = write_jsonl(tmp_path / "two.jsonl", ROWS)  # same content, another file
    other = write_jsonl(tmp_path / "other.jsonl", ROWS[:-1] + [{"prompt": "q9", "completion": "A9"}])
    h = lambda p, **kw: {k: v["sha256"] for k, v in load_splits(cfg(p, **kw), reg, SFT).provenance.items()}  # noqa
    assert h(one) == h(two)
    assert h(one)["train"] != h(other)["train"] or h(one)["dev"] != h(other)["dev"]
    assert h(one) != h(one, system="Be brief.")
    assert h(one) != h(one, split_seed=1)
    s = load_splits(cfg(one), reg, SFT)
    assert s.provenance["train"]["sha256"] == sha256_of(s.train.to_list())
    assert len(s.provenance["train"]["sha256"]) == 64
    assert s.summary() == "format prompt_completion → prompt/completion: train 9, dev 1"


def test_unknown_names(tmp_path, reg):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(SllmxError, match="unknown format 'chatml'; available: alpaca, hh_rlhf"):
        load_splits(cfg(path, format="chatml"), reg, SFT)
    with pytest.raises(SllmxError, match="unknown data 'nowhere'"):
        load_splits(SimpleNamespace(source="nowhere"), reg, SFT)


def test_accepts_an_omegaconf_node(tmp_path, reg):
    from omegaconf import OmegaConf

    node = OmegaConf.structured(FilesDataConfig)
    node.path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    node.columns = {"prompt": "prompt"}
    OmegaConf.set_struct(node, True)
    s = load_splits(node, reg, SFT)
    assert isinstance(s, Splits) and len(s.train) == 9


# ---------------------------------------------------------------------------
# Presets (conf/data/*.yaml) and the real data sets in ../shared/data
# ---------------------------------------------------------------------------

PRESETS = ["ko_chatbot", "hh_rlhf", "alpaca_en_demo", "dpo_en_demo", "kto_en_demo"]


def compose_preset(name: str, shared: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="files", node=FilesDataConfig, provider="sllmx")
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg_ = compose(config_name=None, overrides=[f"+data={name}", f"+shared_data={shared}"])
    return cfg_.data


@pytest.mark.parametrize("name", PRESETS)
def test_presets_compose(name):
    text = (REPO / "conf" / "data" / f"{name}.yaml").read_text()
    assert text.startswith(f"# python -m sllmx data={name}")
    node = compose_preset(name, Path("/somewhere"))
    from omegaconf import OmegaConf

    assert OmegaConf.get_type(node) is FilesDataConfig
    assert node.source == "files" and node.path.startswith("/somewhere/")
    assert node.format != "auto"


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data sets not found at {SHARED} "
                                                               f"(set SLLMX_SHARED_DATA)")


@needs_shared
def test_real_ko_chatbot(reg):
    s = load_splits(compose_preset("ko_chatbot", SHARED), reg, SFT)
    assert (s.format, s.layout) == ("prompt_completion", LAYOUT_PROMPT_COMPLETION)
    assert (len(s.train), len(s.dev), len(s.test)) == (800, 100, 100)
    ex = s.train[0]
    assert ex["prompt"][0]["role"] == "user" and ex["completion"][0]["role"] == "assistant"
    assert any("\uac00" <= ch <= "\ud7a3" for ch in ex["prompt"][0]["content"])  # Hangul


@needs_shared
def test_real_ko_chatbot_auto_detect_with_mapping(reg):
    path = SHARED / "ko_chatbot" / "ChatbotData.csv"
    s = load_splits(cfg(path, columns={"prompt": "Q", "completion": "A"}, format="prompt_completion",
                        max_rows=50), reg, SFT)
    assert len(s.train) + len(s.dev) == 50
    with pytest.raises(SllmxError, match="the columns also fit data.format=prompt_completion"):
        load_splits(cfg(path, columns={"prompt": "Q", "completion": "A"}, max_rows=50), reg, SFT)


@needs_shared
def test_real_hh_rlhf(reg):
    node = compose_preset("hh_rlhf", SHARED)
    s = load_splits(node, reg, DPO)
    assert s.layout == LAYOUT_PREFERENCE and len(s.train) + len(s.dev) == 598
    assert sum(p["skipped"] for p in s.provenance.values()) == 2  # lines 87 and 517: empty chosen answers
    ex = s.train[0]
    assert ex["prompt"][0]["role"] == "user" and ex["prompt"][-1]["role"] == "user"
    assert "\n\nHuman:" not in ex["chosen"][0]["content"]
    node.skip_invalid = False
    with pytest.raises(SllmxError, match=r"harmless-base_test\.jsonl\.gz, line 87: field 'chosen': "
                                         r"the final assistant response is empty"):
        load_splits(node, reg, DPO)


@needs_shared
def test_real_dpo_en_demo(reg):
    s = load_splits(compose_preset("dpo_en_demo", SHARED), reg, DPO)
    assert (s.format, len(s.train), len(s.dev)) == ("sharegpt_preference", 270, 30)
    assert s.train[0]["chosen"][0]["role"] == "assistant"
    kto = load_splits(compose_preset("dpo_en_demo", SHARED), reg, KTO)
    assert (len(kto.train), len(kto.dev)) == (540, 60)


@needs_shared
def test_real_kto_en_demo(reg):
    s = load_splits(compose_preset("kto_en_demo", SHARED), reg, KTO)
    assert (s.format, s.layout) == ("kto_messages", LAYOUT_UNPAIRED)
    labels = list(s.train["label"]) + list(s.dev["label"])
    assert len(labels) == 300 and labels.count(True) == 150


@needs_shared
def test_real_alpaca_en_demo(reg):
    s = load_splits(compose_preset("alpaca_en_demo", SHARED), reg, SFT)
    assert (s.format, len(s.train), len(s.dev)) == ("alpaca", 450, 50)


# ---------------------------------------------------------------------------
# Third-party sources and formats go through the same pipeline
# ---------------------------------------------------------------------------


def stand_in_registry(reg, source=None, formats=()):
    """A registry with the real built-ins plus stand-in plugins (only ``get`` and ``entries`` are used)."""
    entries = {"data": dict(reg.entries["data"]), "format": dict(reg.entries["format"])}
    if source is not None:
        entries["data"][source.name] = SimpleNamespace(obj=source)
    for f in formats:
        entries["format"][f.name] = SimpleNamespace(obj=f)

    def get(kind, name):
        if name not in entries[kind]:
            raise SllmxError(f"unknown {kind} {name!r}")
        return entries[kind][name].obj

    return SimpleNamespace(entries=entries, get=get)


def test_generated_source_errors_and_splits(reg):
    from sllmx.interfaces import DataSource, RawSplit

    class Generated(DataSource):
        name = "generated"

        def __init__(self, dev_reply):
            self.dev_reply = dev_reply

        def load(self, cfg):
            rows = [{"ticket": f"t{i}", "reply": f"r{i}"} for i in range(12)]
            dev = [{"ticket": "dev ticket", "reply": self.dev_reply}]
            mapping = {"prompt": "ticket", "completion": "reply"}
            return {"train": RawSplit(rows, "generated:support", lambda i: f"example {i}", mapping),
                    "dev": RawSplit(dev, "generated:support/dev", lambda i: f"example {i}", mapping),
                    "test": None}

    from sllmx.config import DataConfig

    node = DataConfig(source="generated", test_fraction=0.25, checks=False)
    with pytest.raises(SllmxError, match=r"^generated:support/dev, example 0: field 'completion': is empty "
                                         r"\(data format 'prompt_completion'; data.skip_invalid=true skips "
                                         r"such rows\)$"):
        load_splits(node, stand_in_registry(reg, source=Generated("")), SFT)
    s = load_splits(node, stand_in_registry(reg, source=Generated("ok")), SFT)
    assert (len(s.train), len(s.dev), len(s.test)) == (9, 1, 3)
    assert s.provenance["dev"]["origin"] == "generated:support/dev"


def test_buggy_format_plugins_give_one_line(tmp_path, reg):
    from sllmx.interfaces import DataFormat

    class WrongKeys(DataFormat):
        name = "wrong_keys"
        columns = ("prompt",)
        layouts = (LAYOUT_PROMPT_COMPLETION,)

        def convert(self, row, layout, system=None):
            return [{"prompt": [U(row["prompt"])]}]

    class Crashes(WrongKeys):
        name = "crashes"

        def convert(self, row, layout, system=None):
            return row["nope"]

    r = stand_in_registry(reg, formats=[WrongKeys(), Crashes()])
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(SllmxError, match=r"d\.jsonl, line 1: data format 'wrong_keys' returned \['prompt'\] for "
                                         r"layout prompt/completion \(a bug in that format plugin\)"):
        load_splits(cfg(path, format="wrong_keys"), r, SFT)
    with pytest.raises(SllmxError, match=r"d\.jsonl, line 1: data format 'crashes' failed: KeyError: 'nope'"):
        load_splits(cfg(path, format="crashes"), r, SFT)


def test_permission_denied_is_one_line(tmp_path, reg, monkeypatch):
    import builtins

    import sllmx.data.readers as readers

    path = write_jsonl(tmp_path / "locked.jsonl", ROWS)

    def refuse(file, *a, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *a, **kw)

    monkeypatch.setattr(readers, "open", refuse, raising=False)  # shadows the builtin inside the module
    with pytest.raises(SllmxError, match=rf"^cannot read {path}: Permission denied$"):
        load_splits(cfg(path), reg, SFT)


# -- instruction-template augmentation (issue 19) ---------------------------------------------------------------


def _splits(tmp_path, *overrides):
    from sllmx.data.pipeline import load_splits
    from sllmx.plugins import registry

    cfg = compose_config([*FAST, *overrides], tmp_path / "out", tmp_path / "cache")
    reg = registry()
    return load_splits(cfg.data, reg, reg.get("trainer", cfg.trainer.name))


def test_augmentation_adds_k_rephrased_copies_to_train_only_seeded(tmp_path):
    from sllmx.data.augment import BUILTIN
    from sllmx.data.rows import last_user_text

    plain = _splits(tmp_path)
    aug = _splits(tmp_path, "data.augment_k=2", "data.augment_templates=ko")
    again = _splits(tmp_path, "data.augment_k=2", "data.augment_templates=ko")
    n = len(plain.train)
    assert len(aug.train) == 3 * n and aug.provenance["train"]["augmented"] == {"k": 2, "templates": 6, "examples": n}
    assert list(aug.dev) == list(plain.dev) and list(aug.test) == list(plain.test)  # dev and test untouched
    assert list(aug.train) == list(again.train)  # seeded
    questions = [last_user_text(r["prompt"]) for r in plain.train]
    copies = [last_user_text(r["prompt"]) for r in aug.train if last_user_text(r["prompt"]) not in questions]
    assert len(copies) == 2 * n
    filled = {t.replace("{instruction}", q) for t in BUILTIN["ko"] for q in questions}
    assert set(copies) <= filled
    # the two copies of one example use two different templates; the answers are the original's
    first = [r for r in aug.train if questions[0] in last_user_text(r["prompt"])]
    assert len(first) == 3 and len({last_user_text(r["prompt"]) for r in first}) == 3
    assert len({str(r["completion"]) for r in first}) == 1
    assert aug.provenance["train"]["sha256"] != plain.provenance["train"]["sha256"]


def test_augmentation_of_preference_pairs_rephrases_the_shared_prompt(tmp_path):
    aug = _splits(tmp_path, "trainer=dpo", "data.augment_k=1",
                  "data.augment_templates=[\"Q: {instruction}\",\"Request -> {instruction}\"]")
    prompts = [r["prompt"][-1]["content"] for r in aug.train]
    assert sum(p.startswith(("Q: ", "Request -> ")) for p in prompts) == len(prompts) // 2


@pytest.mark.parametrize("overrides,message", [
    (["data.augment_k=2"], "data.augment_k=2 needs data.augment_templates"),
    (["data.augment_k=7", "data.augment_templates=ko"], "data.augment_k=7 is more than the 6 templates"),
    (["data.augment_k=1", "data.augment_templates=[no placeholder]"], "data.augment_templates[0]='no placeholder': has no"),
    (["data.augment_k=1", "data.augment_templates=fr"], "data.augment_templates=fr: not a built-in list"),
])
def test_bad_augmentation_options_are_one_line(tmp_path, overrides, message):
    with pytest.raises(SllmxError, match=re.escape(message)):
        _splits(tmp_path, *overrides)
