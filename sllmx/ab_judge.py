"""A local model as a judge of a blind A/B export, in the judges' own format (issue 18 item 4).

The judge reads what a person reads — the export's ``items.csv``: the question and the two answers, no
system names — and writes ``judgments-<name>.csv`` in the page's format, so ``python -m sllmx.abtest score``
scores it like a person's file and, given people's files too, reports the agreement (Cohen's / Fleiss'
kappa).

Each item is asked twice, with the answers in both orders, to cancel position bias (Zheng et al., 2023,
"Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena": a verdict that flips with the order is a tie).  The
model does not generate: in each order the judge compares the log-probabilities the model gives the replies
"A" and "B" after :data:`PROMPT` (:func:`sllmx.generation.answer_logprobs`, the chat template with the
generation prompt), so a tiny model still answers one of the two.  With ``margin`` the preference in nats
(order 1's log p(A) − log p(B) plus order 2's log p(B) − log p(A), both favouring the first-listed answer of
the item as A), the judgment is A when both orders prefer the same answer, tie when they disagree.  "both
bad" is never given.

A 135M-parameter model is a demonstration of the procedure, not a judge: check any judge's agreement with
people on the same items before trusting it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Optional

from sllmx.errors import SllmxError

#: the judge's instruction (system) and question (user); {question}, {first} and {second} are filled in
SYSTEM = "You are a strict judge. Compare two answers to the same question and decide which one is better."
PROMPT = ("Question:\n{question}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
          "Which answer is better, A or B? Reply with one letter.")


def read_items(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The export id and the items (``item``, ``question``, ``answer_A``, ``answer_B``) of an ``items.csv``.

    Raises:
        SllmxError: a missing or unreadable file, or missing columns.
    """
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as exc:
        raise SllmxError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); judge an export folder") from None
    need = {"item", "question", "answer_A", "answer_B", "export"}
    if not rows or not need <= set(rows[0]):
        raise SllmxError(f"{path}: line 1: the columns {', '.join(sorted(need))} are expected (an export's items.csv)")
    from sllmx.ab_page import uncell

    for row in rows:  # the texts as exported, without the apostrophe that keeps a spreadsheet from evaluating them
        for column in ("question", "answer_A", "answer_B"):
            row[column] = uncell(row[column])
    return rows[0]["export"], rows


def preference(logprob: Callable[[list[list[dict]], list[list[dict]]], list[float]],
               items: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """For each item, (order 1's log p("A") − log p("B"), order 2's log p("B") − log p("A")), where order 2
    swaps the answers: both positive when the model prefers the item's answer A in both orders.

    Args:
        logprob: ``(prompts, replies) -> summed log-probabilities``, one per pair (message lists).
    """
    prompts = []
    for it in items:
        for first, second in ((it["answer_A"], it["answer_B"]), (it["answer_B"], it["answer_A"])):
            user = PROMPT.format(question=it["question"], first=first, second=second)
            prompts.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
    letters = [[{"role": "assistant", "content": c}] for c in ("A", "B")]
    lp_a = logprob(prompts, [letters[0]] * len(prompts))
    lp_b = logprob(prompts, [letters[1]] * len(prompts))
    return [(lp_a[2 * i] - lp_b[2 * i], lp_b[2 * i + 1] - lp_a[2 * i + 1]) for i in range(len(items))]


def verdict(order1: float, order2: float) -> str:
    """``A`` when both orders prefer the item's answer A, ``B`` when both prefer B, else ``tie``."""
    if order1 > 0 and order2 > 0:
        return "A"
    if order1 < 0 and order2 < 0:
        return "B"
    return "tie"


def judge(model: Any, tokenizer: Any, folder: Path, name: str, batch_size: int = 8,
          out: Optional[Path] = None) -> Path:
    """Judge every item of the export in ``folder`` with ``model``; write ``judgments-<name>.csv`` (columns
    ``item, judgment, judge, comment, export``; the comment holds both orders' margins in nats) and return it.

    Raises:
        SllmxError: a folder without items.csv, or an output file that exists.
    """
    from sllmx.atomic import write_text_atomic
    from sllmx.generation import answer_logprobs

    export_id, items = read_items(folder / "items.csv")
    target = out or folder / f"judgments-{name}.csv"
    if target.exists():
        raise SllmxError(f"{target}: the file exists; nothing is overwritten")
    margins = preference(lambda p, a: answer_logprobs(model, tokenizer, p, a, batch_size), items)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["item", "judgment", "judge", "comment", "export"])
    for it, (m1, m2) in zip(items, margins):
        writer.writerow([it["item"], verdict(m1, m2), name, f"margins {m1:+.3f} (A first), {m2:+.3f} (B first)",
                         export_id])
    write_text_atomic(target, "\ufeff" + buf.getvalue())
    return target
