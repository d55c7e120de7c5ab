"""Built-in prompting baselines: zero_shot, few_shot, rag — methods that train nothing.

"Is fine-tuning needed?": each scores the base model on the same dev (and test) split, with the same
loss, metric, data checks and run.json as a fine-tuned run, so ``python -m sllmx.report`` puts them beside
LoRA and DPO and states whether a fine-tuned row gains clearly over the best of them.  They differ only in
the prompt: the data's own (zero-shot), k train examples as earlier chat turns (few-shot), or retrieved
passages in the user's message (RAG).  ``trainer=`` still chooses the evaluation loss (SFT's by default).

    python -m sllmx method=zero_shot
    python -m sllmx method=few_shot method.k=3 method.selection=similar
    python -m sllmx method=rag method.corpus=train method.k=3

References: Brown et al., 2020 (few-shot prompting); Liu et al., 2022 (similar examples); Lewis et al., 2020
(RAG); BM25 (Robertson & Zaragoza, 2009) through ``bm25s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import MethodConfig, option
from sllmx.interfaces import Method
from sllmx.prompting import RAG_TEMPLATE


@dataclass
class ZeroShotMethodConfig(MethodConfig):
    """Zero-shot: the data's prompts as they are."""

    name: str = "zero_shot"


class ZeroShot(Method):
    """The base model with the data's prompts (its system prompt included): no training."""

    name = "zero_shot"
    config = ZeroShotMethodConfig
    trains = False

    def wrap(self, model: Any, cfg: Any, runtime: Any, tokenizer: Any = None) -> Any:
        return model  # never trained; the runner evaluates the loaded model as it is


@dataclass
class FewShotMethodConfig(MethodConfig):
    """Few-shot prompting (Brown et al., 2020): k train examples before each dev/test prompt."""

    name: str = "few_shot"
    k: int = option("train examples shown before each prompt, as earlier user/assistant turns", 3, ge=1)
    selection: str = option("random: k drawn per prompt (seeded); similar: the k whose user message is closest "
                            "by BM25 (Liu et al., 2022)", "random", choices=("random", "similar"))
    seed: Optional[int] = option("seed of the random selection; null: the run's seed", None)


class FewShot(ZeroShot):
    """k examples from the train split in every prompt (never from dev or test): no training."""

    name = "few_shot"
    config = FewShotMethodConfig

    def prompting(self, cfg: Any, train: Any, seed: int) -> Any:
        from sllmx.prompting import few_shot

        return few_shot(train, cfg.k, cfg.selection, seed if cfg.seed is None else cfg.seed)


@dataclass
class RagMethodConfig(MethodConfig):
    """Retrieval-augmented prompting (Lewis et al., 2020) with BM25: the top-k passages in each prompt."""

    name: str = "rag"
    corpus: str = option("train (the train split's answers), a folder of .txt/.md files (a passage per paragraph), "
                         "or a .jsonl file", "train")
    field: str = option("the passage field of a .jsonl corpus", "text")
    k: int = option("passages retrieved per prompt", 3, ge=1)
    template: str = option("how passages enter the user's message: {passages} and {question}", RAG_TEMPLATE)
    embedding_model: Optional[str] = option("a local embedding model folder: dense retrieval (cosine of mean-pooled "
                                            "states) instead of BM25; nothing is downloaded", None)


class Rag(ZeroShot):
    """The base model with the top-k BM25 passages of a corpus in every prompt: no training."""

    name = "rag"
    config = RagMethodConfig

    def prompting(self, cfg: Any, train: Any, seed: int) -> Any:
        from sllmx.prompting import rag

        return rag(cfg.corpus, cfg.k, cfg.template, train, field=cfg.field, embedding_model=cfg.embedding_model)

    def check(self, trainer: Any, cfg: Any) -> Optional[str]:
        if cfg.eval.get("rag"):
            return "method=rag already retrieves; eval.rag would retrieve a second time (set one of them)"
        return None


@hookimpl
def sllmx_methods() -> list[Method]:
    return [ZeroShot(), FewShot(), Rag()]
