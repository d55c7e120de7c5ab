"""Trainer callbacks the runner adds to every run.

- :class:`GenerationMetricCallback` scores greedy generations on the dev split with a
  metric plugin at each evaluation, and adds ``eval_<name>`` to the evaluation's
  metrics before early stopping and best-checkpoint selection read them.
- :class:`ObserverCallback` records each evaluation in the run's dev-metric history and
  calls the ``sllmx_after_evaluate`` hook.

Early stopping is ``transformers.EarlyStoppingCallback``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sllmx.interfaces import Metric


def dev_prompts_and_references(dataset: Any) -> tuple[list[list[dict]], list[str]]:
    """Prompts (message lists) and reference answers of a dev split, for generation metrics.

    Works for the prompt/completion, preference (reference = ``chosen``) and unpaired
    (only ``label`` true rows) layouts; ``messages`` rows use the last assistant turn.

    Returns:
        ``(prompts, references)`` of equal length; empty when the layout has no reference (plain text).
    """
    prompts, refs = [], []
    cols = set(dataset.column_names)
    for row in dataset:
        if "messages" in cols:
            msgs = row["messages"]
            prompt, answer = msgs[:-1], msgs[-1]["content"]
        elif {"prompt", "chosen"} <= cols:
            prompt, answer = row["prompt"], row["chosen"]
        elif {"prompt", "completion"} <= cols:
            if "label" in cols and not row["label"]:
                continue
            prompt, answer = row["prompt"], row["completion"]
        else:
            return [], []
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(answer, list):
            answer = "".join(m["content"] for m in answer)
        prompts.append(prompt)
        refs.append(answer)
    return prompts, refs


def generate(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int) -> list[str]:
    """Greedy generation of one answer per chat prompt (chat template, left padding).

    Args:
        prompts: message lists; the tokenizer's chat template renders them with the generation prompt.
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts per ``generate`` call.

    Returns:
        the decoded answers (special tokens removed), one per prompt.
    """
    import torch

    was_training = model.training
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in out]


class GenerationMetricCallback(TrainerCallback):
    """At each evaluation, generate on the dev prompts and add the metric's values as ``eval_<key>``.

    Must come before ``EarlyStoppingCallback`` in the callback list: it writes into the
    same metrics dict that early stopping and ``metric_for_best_model`` read.  The latest
    generations are written to ``generations_path`` (JSONL: input, reference, prediction).
    """

    def __init__(self, metric: Metric, dev_dataset: Any, max_new_tokens: int, batch_size: int,
                 generations_path: Path):
        self.metric = metric
        self.prompts, self.references = dev_prompts_and_references(dev_dataset)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.generations_path = generations_path
        self.trainer: Any = None  # set by the runner once the trainer exists, to log the values

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if not self.prompts or metrics is None:
            return
        preds = generate(model, processing_class, self.prompts, self.max_new_tokens, self.batch_size)
        values = {f"eval_{k}": float(v) for k, v in self.metric.compute(preds, self.references).items()}
        metrics.update(values)
        if self.trainer is not None:
            self.trainer.log(values)
        self.generations_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.generations_path, "w", encoding="utf-8") as f:
            for prompt, ref, pred in zip(self.prompts, self.references, preds):
                f.write(json.dumps({"step": state.global_step, "input": prompt, "reference": ref,
                                    "prediction": pred}, ensure_ascii=False) + "\n")


class ObserverCallback(TrainerCallback):
    """Feeds every evaluation to the run's dev-metric history and the ``sllmx_after_evaluate`` hook."""

    def __init__(self, run: Any):
        self.run = run

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        self.run.record.dev_metric.add(state.global_step, metrics, training=self.run.training)
        self.run.pm.hook.sllmx_after_evaluate(run=self.run, metrics=metrics)
