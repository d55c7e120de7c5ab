"""Token-length statistics of the converted examples, with the run's tokenizer and chat template.

An example's length is the number of tokens the trainer sees for it: the chat template applied to
the whole conversation (``messages``, or ``prompt`` + answer for the conversational layouts), or
the plain text tokenized; for preference pairs the longer of prompt + chosen and prompt +
rejected, since each is truncated to ``max_length`` on its own (TRL's DPO/ORPO).  The suggested
``max_length`` is the 99th percentile of train rounded up to a multiple of 16.
"""

from __future__ import annotations

import math
from typing import Any, Optional

ANSWERS = ("completion", "chosen", "rejected")
#: the suggested max_length is p99 rounded up to a multiple of this
ROUND_TO = 16


def _as_text(tokenizer: Any, prompt: Any, answer: Any = None) -> str:
    if isinstance(prompt, list):  # conversational: one rendering of the whole conversation
        msgs = list(prompt) + (list(answer) if isinstance(answer, list) else [])
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return (prompt or "") + (answer if isinstance(answer, str) else "")


def token_lengths(examples: Any, tokenizer: Any) -> list[int]:
    """Tokens per example (a list of dicts or a ``datasets.Dataset`` in one of TRL's layouts).

    Raises:
        ValueError: from the tokenizer's chat template (e.g. a role it does not accept).
    """
    texts: list[str] = []
    owner: list[int] = []
    for i, ex in enumerate(examples):
        if "messages" in ex:
            texts.append(_as_text(tokenizer, ex["messages"]))
            owner.append(i)
        elif "text" in ex:
            texts.append(ex["text"])
            owner.append(i)
        else:
            for key in ANSWERS:
                if key in ex:
                    texts.append(_as_text(tokenizer, ex["prompt"], ex[key]))
                    owner.append(i)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = [0] * (owner[-1] + 1 if owner else 0)
    for i, tokens in zip(owner, ids):
        out[i] = max(out[i], len(tokens))
    return out


def stats(lengths: list[int], max_length: Optional[int]) -> dict[str, Any]:
    """min / median / p95 / p99 / max / mean of ``lengths`` (numpy's linear percentiles) and how many
    exceed ``max_length`` (None: no truncation)."""
    import numpy as np

    a = np.asarray(lengths, dtype=float)
    out = {"examples": len(lengths), "min": int(a.min()), "median": round(float(np.median(a)), 2),
           "p95": round(float(np.percentile(a, 95)), 2), "p99": round(float(np.percentile(a, 99)), 2),
           "max": int(a.max()),
           "mean": round(float(a.mean()), 2), "tokens": int(a.sum())}
    if max_length:
        over = int((a > max_length).sum())
        out.update(truncated=over, truncated_pct=round(100 * over / len(lengths), 2))
    return out


def length_report(splits: dict[str, Any], tokenizer: Any, max_length: Optional[int]) -> tuple[dict, list[str]]:
    """Length statistics per split and the train split's verdict on ``max_length``.

    Returns:
        ``(report, warnings)``: report ``{"max_length", "suggested_max_length", "truncated",
        "truncated_pct", "p99", "by_split": {split: stats}}`` (``suggested_max_length`` None when ``max_length``
        is None: the trainer cuts nothing, e.g. continued pre-training's blocks); a warning when ``max_length``
        truncates more than 1% of train examples (and the suggestion is larger) or exceeds twice their p99,
        and one when it truncates any dev or test example.
    """
    by_split = {name: stats(token_lengths(ds, tokenizer), max_length)
                for name, ds in splits.items() if ds is not None and len(ds)}
    train = by_split["train"]
    suggested = int(math.ceil(train["p99"] / ROUND_TO) * ROUND_TO) if max_length else None
    report = {"max_length": max_length, "suggested_max_length": suggested, "p99": train["p99"],
              "truncated": train.get("truncated", 0), "truncated_pct": train.get("truncated_pct", 0.0),
              "by_split": by_split}
    warnings = []
    if max_length and train["truncated_pct"] > 1 and suggested > max_length:
        warnings.append(f"trainer.max_length={max_length} truncates {train['truncated']} of {train['examples']} "
                        f"train examples ({train['truncated_pct']}%); p99 is {train['p99']:.0f} tokens: "
                        f"trainer.max_length={suggested} keeps 99%")
    elif max_length and max_length > 2 * train["p99"]:
        warnings.append(f"trainer.max_length={max_length} is more than twice the train p99 ({train['p99']:.0f} "
                        f"tokens); trainer.max_length={suggested} keeps 99% of examples whole")
    for name in ("dev", "test"):  # e.g. few-shot or RAG prompts (sllmx.prompting), longer than any train example
        s = by_split.get(name) or {}
        if max_length and s.get("truncated"):
            need = int(math.ceil(s["max"] / ROUND_TO) * ROUND_TO)
            warnings.append(f"trainer.max_length={max_length} truncates {s['truncated']} of {s['examples']} {name} "
                            f"examples, so their loss covers only what fits (the longest has {s['max']} tokens): "
                            f"trainer.max_length={need} keeps them whole")
    return report, warnings


def describe(report: dict[str, Any]) -> list[str]:
    """Readable lines of a :func:`length_report`."""
    lines = []
    for name, s in report.get("by_split", {}).items():
        cut = f", {s['truncated']} over max_length {report['max_length']}" if "truncated" in s else ""
        lines.append(f"tokens in {name}: min {s['min']}, median {s['median']:.0f}, p95 {s['p95']:.0f}, "
                     f"p99 {s['p99']:.0f}, max {s['max']} (mean {s['mean']:.1f}, {s['examples']} examples){cut}")
    if report.get("suggested_max_length"):
        lines.append(f"suggested max_length: {report['suggested_max_length']} (train p99 rounded up to a multiple "
                     f"of {ROUND_TO})")
    return lines


def check_lengths(splits: Any, tokenizer: Any, max_length: Optional[int]) -> None:
    """Token-length statistics of ``splits`` (a :class:`sllmx.data.pipeline.Splits`) into its report,
    with a warning when ``max_length`` truncates more than 1% of train or is over twice its p99."""
    lengths, warnings = length_report({"train": splits.train, "dev": splits.dev, "test": splits.test},
                                      tokenizer, max_length)
    splits.report.lengths = lengths
    for w in warnings:
        splits.report.warn(w)
