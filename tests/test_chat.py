"""python -m sllmx.chat: batch answers equal the run's dev generations (run folder and export folder), the
interactive loop over stdin, a base model chosen by overrides, refusals."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sllmx.chat import Chatter, find_target, interactive, load_chatter, main, read_prompts
from sllmx.errors import SllmxError
from sllmx.export import export
from tests.common import ROOT
from tests.test_export import dev_rows, make_run


@pytest.fixture
def lora_run(tmp_path_factory):
    return make_run("lora", tmp_path_factory)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def dev_prompt_rows(run_dir: Path) -> list:
    """The run's dev prompts as chat input: ``messages`` rows (the whole prompt) and ``prompt`` rows (the user
    turn alone; chat adds the run's system prompt), alternating."""
    rows = []
    for i, r in enumerate(dev_rows(run_dir)):
        assert r["input"][0]["role"] == "system" and r["input"][-1]["role"] == "user"
        rows.append({"messages": r["input"]} if i % 2 else {"prompt": r["input"][-1]["content"], "id": i})
    return rows


def test_batch_answers_equal_the_runs_dev_generations(lora_run, tmp_path):
    rows = dev_prompt_rows(lora_run)
    out = tmp_path / "answers.jsonl"
    assert main([str(lora_run), "--input", str(write_jsonl(tmp_path / "p.jsonl", rows)), "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = dev_rows(lora_run)
    assert any(r["prediction"] for r in expected)
    assert [g["answer"] for g in got] == [r["prediction"] for r in expected]
    assert [g["truncated"] for g in got] == [r["truncated"] for r in expected]
    assert [{k: v for k, v in g.items() if k not in ("answer", "truncated")} for g in got] == rows  # rows kept


def test_batch_answers_from_an_export_folder(lora_run, tmp_path):
    for kind, flags in (("merged", {}), ("adapter", {"adapter_only": True})):
        folder = tmp_path / kind
        export(lora_run, folder, verify=False, **flags)
        out = tmp_path / f"{kind}.jsonl"
        assert main([str(folder), "--input", str(write_jsonl(tmp_path / "p.jsonl", dev_prompt_rows(lora_run))),
                     "--output", str(out)]) == 0
        got = [json.loads(line)["answer"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert got == [r["prediction"] for r in dev_rows(lora_run)], kind


def test_interactive_loop_over_stdin_with_exit(lora_run):
    """A subprocess reads turns from stdin; its answers equal those of the same conversations asked in-process."""
    first, second = "주문 A12345 취소해 주세요.", "배송은 언제 되나요?"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-m", "sllmx.chat", str(lora_run)],
                          input=f"{first}\n{second}\n/reset\n{first}\n/exit\nnever answered\n", capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "history cleared" in proc.stderr

    chatter = load_chatter(find_target([str(lora_run)], []), device="cpu")
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    a1 = chatter.answer([chatter.conversation([user(first)])])[0]
    a2 = chatter.answer([chatter.conversation([user(first), {"role": "assistant", "content": a1}, user(second)])])[0]
    assert a1 and a2
    assert proc.stdout == f"{a1}\n{a2}\n{a1}\n"  # /reset forgot the first turns; /exit ended before "never answered"


class Echo(Chatter):
    """A chatter without a model: answers with the number of turns it was given and the last user text."""

    def __init__(self):
        super().__init__(model=None, tokenizer=None, label="echo", max_new_tokens=8, batch_size=1, system="sys")
        self.seen = []

    def answer(self, conversations, truncated=None):
        self.seen.extend(conversations)
        if truncated is not None:
            truncated.extend(False for _ in conversations)
        return [f"{len(c)}:{c[-1]['content']}" for c in conversations]


def test_interactive_keeps_history_resets_and_ends_at_eof():
    echo, out = Echo(), io.StringIO()
    assert interactive(echo, io.StringIO("a\n\nb\n/reset\nc\n"), out, prompt=False) == 0  # EOF ends it
    assert out.getvalue() == "2:a\n4:b\n2:c\n"  # system + turns; the blank line is skipped
    assert echo.seen[1] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"},
                            {"role": "assistant", "content": "2:a"}, {"role": "user", "content": "b"}]


def test_base_model_from_overrides(lora_run, tmp_path):
    """``model=tiny`` chats with the untrained base, as a run starts from it (before fine-tuning)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sllmx.generation import generate
    from sllmx.run_folder import read_run, resolve_base

    cache = lora_run.parent / "cache"
    rows = dev_prompt_rows(lora_run)[:2]
    out = tmp_path / "base.jsonl"
    overrides = ["model=tiny", f"cache_dir={cache}", "trainer.precision=fp32", "eval.max_new_tokens=12"]
    assert main([*overrides, "--input", str(write_jsonl(tmp_path / "p.jsonl", rows)), "--output", str(out)]) == 0
    answered = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    got = [r["answer"] for r in answered]

    path, _ = resolve_base(read_run(lora_run))  # the same tiny base the run started from
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [r["input"] for r in dev_rows(lora_run)[:2]]
    cut = []
    assert got == generate(model, tokenizer, prompts, 12, 16, cut)
    assert [r["truncated"] for r in answered] == cut == [True, True]  # 12 new tokens each (eval.max_new_tokens)
    assert got != [r["prediction"] for r in dev_rows(lora_run)[:2]]  # not the fine-tuned model's answers


def test_refusals(lora_run, tmp_path, capsys):
    failed = tmp_path / "failed"
    failed.mkdir()
    data = json.loads((lora_run / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**data, "status": "FAIL"}))
    taken = tmp_path / "taken.jsonl"
    taken.write_text("mine\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": "not a list"}\n')
    cases = [
        ([str(failed)], "status FAIL"),
        ([str(tmp_path / "nope")], "no such run or model folder"),
        ([str(tmp_path)], "neither a run folder"),
        ([str(lora_run), "model=tiny"], "give one or the other"),
        ([str(lora_run), "--input", str(bad)], f"{bad}, line 2: field 'messages'"),
        ([str(lora_run), "--input", str(bad), "--output", str(taken)], "the file exists"),
        ([str(lora_run), "--output", str(tmp_path / "o.jsonl")], "--output needs --input"),
        ([str(lora_run), "--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["model=no_such_model"], "model/no_such_model"),
        ([str(lora_run), "--temperature", "1"], "unrecognized arguments: --temperature"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert err.startswith("sllmx: error: ") and err.count("\n") == 1 and message in err, err
    assert taken.read_text() == "mine\n"


def test_read_prompts_accepts_prompt_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"messages": [{"role": "user", "content": "yo"}]}])
    assert [sorted(r) for r in read_prompts(path)] == [["prompt"], ["messages"]]
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(SllmxError, match="no prompts"):
        read_prompts(tmp_path / "e.jsonl")
