"""Continued pre-training (issue 19): the text_files source, trainer=cpt's blocks, dev perplexity."""

import math

import pytest

from sllmx.data.readers import read_text_files
from sllmx.errors import SllmxError
from sllmx.run import run
from tests.common import FAST_RUN, compose_config

#: a block of trainer=cpt in these tests (tokens)
BLOCK = 32


def _document(d: int, sentences: int = 30) -> str:
    """A made-up document: numbered Korean and English clauses (the project's own text)."""
    lines = [f"제{d}장 시험 문서"]
    for i in range(sentences):
        lines.append(f"제{i + 1}조 이 법은 시험 {d}-{i}을 위하여 만든다. Article {i + 1} of part {d} applies to case "
                     f"{d * 100 + i}.")
        if i % 10 == 9:
            lines.append("")  # a paragraph break every ten clauses
    return "\n".join(lines) + "\n"


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for d in range(6):
        (root / ("sub" if d % 2 else "") / f"doc{d}.{'md' if d == 5 else 'txt'}").write_text(_document(d), "utf-8")
    (root / "notes.csv").write_text("a,b\n1,2\n", "utf-8")  # not a text file: left out
    (root / "blank.txt").write_text("  \n\n", "utf-8")       # no text: no row
    return root


def test_a_folder_reads_as_one_text_row_per_file_or_paragraph(corpus):
    split = read_text_files(str(corpus))
    names = [split.line_of(i) for i in range(len(split.rows))]
    assert names == ["doc0.txt", "doc2.txt", "doc4.txt", "sub/doc1.txt", "sub/doc3.txt", "sub/doc5.md"]
    assert split.rows[0] == {"text": _document(0).strip()}
    paras = read_text_files(str(corpus), "paragraph")
    assert len(paras.rows) == 6 * 3 and paras.line_of(1) == "doc0.txt, paragraph 2"
    assert paras.rows[1]["text"].startswith("제11조")
    assert len(read_text_files(str(corpus / "doc2.txt")).rows) == 1


@pytest.mark.parametrize("make,words", [
    (lambda root: root / "missing", ["missing", "no such file or folder"]),
    (lambda root: (root / "empty").mkdir() or root / "empty", ["empty", "no .txt or .md files"]),
    (lambda root: (root / "latin.txt").write_bytes(b"caf\xe9\n") and root / "latin.txt", ["latin.txt", "not UTF-8"]),
    (lambda root: (root / "rows.csv").write_text("a\n1\n") and root / "rows.csv", ["rows.csv", "unknown type"]),
])
def test_bad_text_folders_are_one_line_naming_the_path(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(SllmxError) as err:
        read_text_files(str(path))
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_cpt_cuts_the_documents_joined_with_eos_into_blocks(corpus, tmp_path):
    """TRL's wrapped packing as trainer=cpt configures it: every train row is a block of max_length tokens but the
    last, and the blocks are the documents' tokens, each document followed by EOS, in order."""
    import datasets
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sllmx_plugins.tiny_model import TinyModelConfig, TinySource
    from sllmx_plugins.trainers import CPT, CPTTrainerConfig

    path = TinySource().resolve(TinyModelConfig(), str(tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    docs = [row["text"] for row in read_text_files(str(corpus)).rows]
    data = datasets.Dataset.from_list([{"text": d} for d in docs])
    cfg = OmegaConf.structured(CPTTrainerConfig(max_length=BLOCK, learning_rate=1e-3))
    trainer = CPT().build(model, tok, data, data, cfg, {"output_dir": str(tmp_path / "out"), "use_cpu": True,
                                                         "report_to": [], "max_steps": 1}, [])
    rows = trainer.train_dataset["input_ids"]
    assert all(len(r) == BLOCK for r in rows[:-1]) and 0 < len(rows[-1]) <= BLOCK
    expected = [t for d in docs for t in tok(d + tok.eos_token, add_special_tokens=False)["input_ids"]]
    assert [t for r in rows for t in r] == expected
    assert len(rows) == math.ceil(len(expected) / BLOCK) > 2 * len(docs)
    assert CPT().truncation_length(cfg) is None  # nothing is cut: no truncation warning for long documents


def test_cpt_on_a_text_folder_trains_on_full_blocks_with_dev_perplexity(corpus, tmp_path):
    record = run(compose_config([*FAST_RUN, "data=text_files", f"data.path={corpus}", "trainer=cpt",
                                 f"trainer.max_length={BLOCK}", "data.metric=perplexity"],
                                tmp_path / "run", tmp_path / "cache"))
    assert record.status == "COMPLETE"
    assert record.data["splits"]["dev"]["rows"] >= 1 and "held out" in record.data["splits"]["dev"]["origin"]
    assert record.train_tokens == 4 * 4 * BLOCK  # 4 steps of 4 full blocks
    first, last = record.dev_metric.history[0]["metrics"], record.dev_metric.history[-1]["metrics"]
    assert first["eval_perplexity"] == pytest.approx(math.exp(first["eval_loss"]), rel=1e-6)
    assert last["eval_loss"] < first["eval_loss"]  # the dev documents' perplexity moved
    assert not any("truncates" in w for w in record.data_checks["warnings"])
    assert record.defaults["trainer.learning_rate"]["value"] == 1e-4  # trainer=cpt, method=lora: the adapter row


@pytest.mark.parametrize("overrides,words", [
    (["data=support_ko", "data.n_train=24"], ["cpt", "text"]),
    (["data=text_files", "data.path=.", "trainer.packing=false"], ["trainer.packing=false", "blocks"]),
])
def test_cpt_refuses_what_it_cannot_train_on(tmp_path, overrides, words):
    with pytest.raises(SllmxError) as err:
        run(compose_config([*FAST_RUN, "trainer=cpt", *overrides], tmp_path / "run", tmp_path / "cache"))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_the_data_check_of_a_cpt_corpus_warns_of_no_truncation(corpus, tmp_path, capsys):
    """python -m sllmx.data check: trainer=cpt cuts nothing (its blocks), so long documents are no warning."""
    from sllmx.data.__main__ import check

    status = check(["model=tiny", "data=text_files", f"data.path={corpus}", "trainer=cpt", f"cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert status == 0 and "tokens in train" in out and "tokens in dev" in out
    assert "truncates" not in out and "over max_length" not in out
