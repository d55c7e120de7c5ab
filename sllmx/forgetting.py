"""Forgetting check: a general-ability data set scored before and after fine-tuning.

With ``eval.general_data=FILE`` (any data file sllmx reads: chat ``messages``,
prompt/completion, Alpaca, plain ``text`` rows, ...), the run scores up to
``eval.general_max_rows`` of its rows with the untrained model and again with the selected
checkpoint: the mean negative log-likelihood per answer token (nats) and its exponential, the
perplexity.  ``run.json`` gets ``forgetting = {"data", "rows", "tokens", "before": {"loss",
"perplexity"}, "after": {...}, "perplexity_ratio", "flagged"}``; ``flagged`` (and a warning)
when the perplexity rose by more than ``eval.forgetting_threshold`` (default 0.1 = 10%) —
catastrophic forgetting of what the file measures (McCloskey & Cohen, 1989; for LLM
fine-tuning, Luo et al., 2023, "An Empirical Study of Catastrophic Forgetting in Large Language
Models During Continual Fine-tuning").
"""

from __future__ import annotations

import math
from typing import Any

from sllmx.interfaces import LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT

#: the layouts the forgetting check scores, preferred first
GENERAL_LAYOUTS = (LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT)


def load_general(path: str, max_rows: int, reg: Any) -> Any:
    """The first ``max_rows`` rows of ``path`` (any file :func:`sllmx.data.readers.read_file` reads) as a
    ``datasets.Dataset`` in the messages, prompt/completion or text layout, the format detected from the
    columns; invalid rows are skipped and no data-quality check runs (the file is scored, not trained on).

    Raises:
        SllmxError: the file cannot be read or has no format the checks can score.
    """
    from sllmx.config import DataConfig
    from sllmx.data.pipeline import prepare_splits
    from sllmx.data.readers import read_file

    rows = read_file(path, max_rows)
    data = DataConfig(source="eval.general_data", max_rows=max_rows, max_dev_rows=max_rows, dev_fraction=0.0,
                      skip_invalid=True, checks=False)
    return prepare_splits({"train": rows, "dev": rows}, data, reg, GENERAL_LAYOUTS, "eval.general_data").dev


def token_nll(model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> tuple[float, int]:
    """``(mean negative log-likelihood per token in nats, tokens)`` of the answers in ``dataset``:
    the completion (prompt/completion), the last message (messages), or the whole text (text)."""
    import torch

    from sllmx.generation import answer_logprobs

    cols = set(dataset.column_names)
    if "text" in cols:
        total, n = 0.0, 0
        model.eval()
        for row in dataset:
            ids = tokenizer(row["text"], return_tensors="pt", add_special_tokens=True)["input_ids"].to(model.device)
            if ids.shape[1] < 2:
                continue
            with torch.no_grad():
                loss = model(ids, labels=ids).loss.item()  # mean over ids.shape[1] - 1 predicted tokens
            total += loss * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
        return (total / n if n else float("nan")), n
    if "messages" in cols:
        prompts = [list(r["messages"][:-1]) for r in dataset]
        answers = [[r["messages"][-1]] for r in dataset]
    else:
        prompts = [list(r["prompt"]) for r in dataset]
        answers = [list(r["completion"]) for r in dataset]
    counts: list[int] = []
    logps = answer_logprobs(model, tokenizer, prompts, answers, batch_size, counts)
    n = int(sum(counts))
    return (-sum(logps) / n if n else float("nan")), n


def score(model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> dict[str, float]:
    """``{"loss": mean token NLL, "perplexity": exp(loss), "tokens": n}``."""
    loss, n = token_nll(model, tokenizer, dataset, batch_size)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n}


def compare(before: dict[str, float], after: dict[str, float], threshold: float) -> dict[str, Any]:
    """The record's ``forgetting`` entry from the two scores; ``flagged`` when perplexity rose by more
    than ``threshold`` (a fraction)."""
    ratio = after["perplexity"] / before["perplexity"]
    return {"before": before, "after": after, "perplexity_ratio": ratio, "threshold": threshold,
            "flagged": bool(ratio > 1 + threshold)}
