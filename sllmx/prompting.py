"""How dev and test prompts are built when not as the data has them: k examples from the train split
(few-shot) or retrieved passages (RAG), for the prompting baselines (``method=few_shot``, ``method=rag``) and
for any run evaluated with retrieval (``eval.rag=...``).

A :class:`Prompting` rewrites one prompt (a list of chat messages, or a plain string) at a time; the train
split is the only source of examples, so nothing of dev or test reaches a prompt.  The runner rewrites the
dev and test splits with it before anything is evaluated (:func:`rewrite_split`, from
:func:`sllmx.run.prompting_of`), so the loss, the generations and the metric all see the same prompts, and
run.json records how they were built (``prompting``).

References: few-shot prompting, Brown et al., 2020, "Language Models are Few-Shot Learners"; similar examples
chosen by retrieval, Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?"; retrieval-augmented
generation, Lewis et al., 2020.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sllmx.data.rows import last_user_text, with_user_text
from sllmx.errors import SllmxError

#: the default RAG template: ``{passages}`` is "[1] ...\\n[2] ..." (best first), ``{question}`` the user's message
RAG_TEMPLATE = "Reference passages (use them if they help):\n{passages}\n\nQuestion: {question}"

#: the RAG template's placeholders
PLACEHOLDER = re.compile(r"\{(passages|question)\}")

Messages = list  # a chat prompt: [{"role": ..., "content": ...}, ...] (or a plain string prompt)


@dataclass
class Prompting:
    """A rewrite of eval prompts.

    Attributes:
        kind: ``few_shot`` or ``rag`` (or a plugin's own), recorded in run.json.
        rewrite: ``(prompt) -> prompt``: a message list (or a string) in, the new one out.
        settings: what run.json's ``prompting`` records besides ``kind`` (k, selection, corpus, template, ...).
    """

    kind: str
    rewrite: Callable[[Any], Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """``{"kind": ..., **settings}`` for run.json."""
        return {"kind": self.kind, **self.settings}


def chain(*parts: Optional[Prompting]) -> Optional[Prompting]:
    """One :class:`Prompting` applying ``parts`` in order (None parts skipped); None when none is given."""
    parts = tuple(p for p in parts if p is not None)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]

    def rewrite(prompt: Any) -> Any:
        for p in parts:
            prompt = p.rewrite(prompt)
        return prompt

    return Prompting("+".join(p.kind for p in parts), rewrite, {p.kind: p.settings for p in parts})


# -- the train split as examples ------------------------------------------------------------------------

def _as_messages(value: Any, role: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": value}] if isinstance(value, str) else [dict(m) for m in value]


def examples_of(train: Any) -> list[tuple[list[dict], list[dict]]]:
    """The train split as ``(prompt messages without system ones, answer messages)`` pairs, in its order.

    Layouts: ``messages`` (the last assistant turn is the answer), ``prompt``/``completion`` (rows whose
    ``label`` is false are skipped: an undesirable answer is not an example), ``prompt``/``chosen``.

    Raises:
        SllmxError: for a split in another layout (plain text has no answers to show).
    """
    cols = set(train.column_names)
    out = []
    for row in train:
        if "messages" in cols:
            msgs = list(row["messages"])
            prompt, answer = msgs[:-1], msgs[-1:]
        elif {"prompt", "completion"} <= cols:
            if "label" in cols and not row["label"]:
                continue
            prompt, answer = _as_messages(row["prompt"], "user"), _as_messages(row["completion"], "assistant")
        elif {"prompt", "chosen"} <= cols:
            prompt, answer = _as_messages(row["prompt"], "user"), _as_messages(row["chosen"], "assistant")
        else:
            raise SllmxError(f"few-shot examples need prompts and answers; the train split has {sorted(cols)}")
        out.append(([m for m in prompt if m.get("role") != "system"], answer))
    return out


def _insert_shots(prompt: Any, shots: list[tuple[list[dict], list[dict]]]) -> Any:
    """The prompt with ``shots`` as earlier turns, after its system messages (a string prompt: the shots'
    texts first, each "question\\nanswer", separated by blank lines)."""
    if isinstance(prompt, str):
        texts = ["\n".join(m["content"] for m in p + a) for p, a in shots]
        return "\n\n".join([*texts, prompt])
    system = [m for m in prompt if m.get("role") == "system"]
    rest = [m for m in prompt if m.get("role") != "system"]
    turns = [m for p, a in shots for m in (*p, *a)]
    return [*system, *turns, *rest]


def few_shot(train: Any, k: int, selection: str = "random", seed: int = 0) -> Prompting:
    """k examples of the train split as earlier chat turns of every prompt.

    Args:
        train: the train split (a ``datasets.Dataset`` in the trainer's layout).
        k: examples per prompt (at most the train split's size).
        selection: ``random`` (k distinct examples drawn for each prompt from ``random.Random`` seeded with
            ``seed`` and the prompt's text, so a prompt gets the same examples in every run and process) or
            ``similar`` (the k train examples whose user message is closest to the prompt's by BM25 over
            Korean morphemes / words: :class:`sllmx.retrieval.BM25Retriever`; Liu et al., 2022).
        seed: the random selection's seed.

    Raises:
        SllmxError: an unknown selection, k < 1, or a train split with no examples.
    """
    if k < 1:
        raise SllmxError(f"few-shot k={k}: give 1 or more")
    examples = examples_of(train)
    if not examples:
        raise SllmxError("few-shot: the train split has no examples to show")
    k = min(k, len(examples))
    if selection == "random":
        def pick(prompt: Any) -> list[int]:
            rng = random.Random(f"{seed}\x00{last_user_text(prompt)}")
            return rng.sample(range(len(examples)), k)
    elif selection == "similar":
        from sllmx.retrieval import BM25Retriever, Passage

        index = BM25Retriever([Passage(last_user_text(p) or "", f"train:{i}") for i, (p, _) in enumerate(examples)])

        def pick(prompt: Any) -> list[int]:
            return [i for i, _ in index.search(last_user_text(prompt), k)]
    else:
        raise SllmxError(f"few-shot selection={selection!r}: use random or similar")

    def rewrite(prompt: Any) -> Any:
        # the most similar example last, nearest the question
        return _insert_shots(prompt, [examples[i] for i in reversed(pick(prompt))])

    return Prompting("few_shot", rewrite, {"k": k, "selection": selection, "seed": seed, "examples": len(examples)})


def train_answers(train: Any) -> list[str]:
    """The answers of the train split's examples (:func:`examples_of`), as text: the default RAG corpus."""
    return ["".join(str(m.get("content") or "") for m in answer) for _, answer in examples_of(train)]


def rag(corpus: str, k: int, template: str, train: Any, field: str = "text",
        embedding_model: Optional[str] = None) -> Prompting:
    """The top-k passages of ``corpus`` for each prompt's last user message, put into that message with
    ``template`` (``{passages}``: the passages numbered "[1] ...", best first, one per line; ``{question}``:
    the message).  BM25 over Kiwi morphemes for Korean and words otherwise (:mod:`sllmx.retrieval`).

    Args:
        corpus: ``train`` (the train split's answers), a folder of .txt/.md files (one passage per paragraph),
            or a .jsonl file (one passage per line, from ``field``).
        k: passages per prompt.
        template: must hold ``{passages}`` and ``{question}``; both are filled in one pass.
        embedding_model: a local model folder: dense retrieval (:class:`sllmx.retrieval.DenseRetriever`)
            instead of BM25.

    Raises:
        SllmxError: k < 1, a template without both placeholders, or a corpus :func:`sllmx.retrieval.load_corpus`
            refuses (naming the file, line and field).
    """
    if k < 1:
        raise SllmxError(f"rag k={k}: give 1 or more")
    missing = [p for p in ("{passages}", "{question}") if p not in template]
    if missing:
        raise SllmxError(f"the rag template lacks {' and '.join(missing)}: {template!r}")
    from sllmx.retrieval import BM25Retriever, load_corpus

    passages = load_corpus(corpus, train_answers(train) if corpus == "train" else None, field=field)
    if embedding_model:
        from sllmx.retrieval import DenseRetriever

        index = DenseRetriever(passages, embedding_model)
    else:
        index = BM25Retriever(passages)

    def rewrite(prompt: Any) -> Any:
        question = last_user_text(prompt)
        hits = index.search(question, k)
        values = {"passages": "\n".join(f"[{n}] {passages[i].text}" for n, (i, _) in enumerate(hits, 1)),
                  "question": question}
        # one pass: a passage or question that holds the text "{question}" stays as it is
        return with_user_text(prompt, PLACEHOLDER.sub(lambda m: values[m.group(1)], template))

    return Prompting("rag", rewrite, {"corpus": corpus, "k": k, "template": template, "passages": len(passages),
                                      "retriever": "dense" if embedding_model else "bm25",
                                      **({"embedding_model": embedding_model} if embedding_model else {})})


# -- applying it ------------------------------------------------------------------------------------------

def leaked(original: Any, rewritten: Any) -> list[int]:
    """Rows of a split whose rewritten prompt contains the row's own reference answer verbatim (whitespace
    collapsed) when its original prompt did not: retrieval or examples that show the model the answer it is
    scored against.  Both are datasets of the same rows in a prompt layout; [] for other layouts."""
    from sllmx.generation import dev_prompts_and_references

    before, refs = dev_prompts_and_references(original)
    after, _ = dev_prompts_and_references(rewritten)
    flat = lambda prompt: " ".join(" ".join(str(m.get("content") or "") for m in prompt).split())  # noqa: E731
    out = []
    for i, (p0, p1, ref) in enumerate(zip(before, after, refs)):
        answer = " ".join(str(ref).split())
        if len(answer) >= 8 and answer in flat(p1) and answer not in flat(p0):
            out.append(i)
    return out


def rewrite_split(dataset: Any, prompting: Prompting) -> Any:
    """``dataset`` with every prompt rewritten (the ``prompt`` column, or the turns before the last in a
    ``messages`` row); None stays None."""
    if dataset is None or len(dataset) == 0:
        return dataset
    cols = set(dataset.column_names)
    if "prompt" in cols:
        return dataset.map(lambda row: {"prompt": prompting.rewrite(row["prompt"])}, desc="prompts")
    if "messages" in cols:
        return dataset.map(lambda row: {"messages": [*prompting.rewrite(list(row["messages"][:-1])),
                                                     row["messages"][-1]]}, desc="prompts")
    raise SllmxError(f"prompts cannot be rewritten in a split with columns {sorted(cols)} (no prompt)")
