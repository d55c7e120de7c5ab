"""An example third-party sllmx plugin, built on sllmx's public API only (``sllmx``, ``sllmx.interfaces``,
``sllmx.config``, ``sllmx.generation``): see docs/plugins.md.

- ``method=ln_tuning``: LN tuning (Zhao et al., 2023, "Tuning LayerNorm in Attention: Towards Efficient
  Multi-Modal LLM Finetuning") through ``peft.LNTuningConfig``.  It needs the tokenizer: a tokenizer with more tokens than
  the model has embeddings (added special tokens) gets the embeddings resized before wrapping.
- ``data.metric=answer_logprob``: the mean log-probability per token of the reference answers of the dev split
  under the model (nats; higher is better).  Its input is its own (``needs = "answer_logprobs"``), computed by
  :meth:`AnswerLogprob.inputs` with sllmx's public scoring helpers.
- ``logger=jsonl``: every number the run logs, one JSON line per call, in a file of the run folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sllmx import hookimpl
from sllmx.config import MethodConfig
from sllmx.interfaces import Logger, Method, Metric, MetricInputs

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- a method


@dataclass
class LNTuningConfig(MethodConfig):
    """Options of ``peft.LNTuningConfig``; each field's help text is shown by ``python -m sllmx --help``."""

    name: str = "ln_tuning"
    target_modules: list[str] = field(default_factory=lambda: ["input_layernorm", "post_attention_layernorm"],
                                      metadata={"help": "the LayerNorm (RMSNorm) modules that train"})


class LNTuning(Method):
    """LN tuning: only the LayerNorm weights train (peft.LNTuningConfig)."""

    name = "ln_tuning"
    config = LNTuningConfig

    def wrap(self, model: Any, cfg: Any, runtime: Any, tokenizer: Any = None) -> Any:
        """Resize the embeddings to the tokenizer when it has more tokens, then ``peft.get_peft_model``."""
        from peft import LNTuningConfig as PeftLNTuningConfig
        from peft import get_peft_model

        if tokenizer is None:
            raise ValueError("method=ln_tuning needs the tokenizer")
        embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:
            model.resize_token_embeddings(len(tokenizer))
        log.info("ln_tuning: tokenizer %s with %d tokens, %d embeddings", type(tokenizer).__name__, len(tokenizer),
                 embeddings)
        return get_peft_model(model, PeftLNTuningConfig(task_type="CAUSAL_LM",
                                                        target_modules=list(cfg.target_modules)))


# ----------------------------------------------------------------------------- a metric with its own needs


class AnswerLogprob(Metric):
    """Mean log-probability per token of the dev split's reference answers under the model (nats)."""

    name = "answer_logprob"
    higher_is_better = True
    needs = "answer_logprobs"  # not one sllmx computes: sllmx calls inputs() below

    def inputs(self, model: Any, tokenizer: Any, dataset: Any, settings: dict[str, Any]) -> MetricInputs | None:
        """Each reference answer's summed log-probability and token count given its prompt."""
        from sllmx.generation import answer_logprobs, dev_prompts_and_references

        prompts, references = dev_prompts_and_references(dataset)
        if not prompts:
            return None  # a split without reference answers: the metric is left out
        answers = [[{"role": "assistant", "content": r}] for r in references]
        counts: list[int] = []
        logprobs = answer_logprobs(model, tokenizer, prompts, answers, settings["batch_size"], counts,
                                   runtime=settings["runtime"])
        rows = [{"reference": r, "logprob": lp, "tokens": n} for r, lp, n in zip(references, logprobs, counts)]
        return MetricInputs(args=(logprobs, counts), rows=rows)

    def compute(self, logprobs: list[float], counts: list[int]) -> dict[str, float]:
        """The summed log-probabilities over the summed token counts."""
        return {"answer_logprob": sum(logprobs) / max(sum(counts), 1)}


# ----------------------------------------------------------------------------- a logger


@dataclass
class JsonlLoggerConfig:
    """Options of ``logger=jsonl``."""

    name: str = "jsonl"
    file: str = field(default="metrics.jsonl", metadata={"help": "the file, in the run folder"})


class JsonlLogger(Logger):
    """Every logged number as a JSON line in the run folder (``logger.file``), and the final status."""

    name = "jsonl"
    config = JsonlLoggerConfig

    def __init__(self) -> None:
        self.path: Path | None = None

    def start(self, run: Any, cfg: Any) -> None:
        """Open the file in the run folder."""
        self.path = Path(run.output_dir) / cfg.file
        self.path.write_text(json.dumps({"start": run.record.method, "trainer": run.record.trainer}) + "\n")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One line per call: the step and the numbers."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def finish(self, record: Any) -> None:
        """The run's final status and best dev metric."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"status": record.status, "best": record.dev_metric.best}) + "\n")


# ----------------------------------------------------------------------------- registration


@hookimpl
def sllmx_methods() -> list[Method]:
    """Register ln_tuning."""
    return [LNTuning()]


@hookimpl
def sllmx_metrics() -> list[Metric]:
    """Register answer_logprob."""
    return [AnswerLogprob()]


@hookimpl
def sllmx_loggers() -> list[Logger]:
    """Register jsonl."""
    return [JsonlLogger()]
