"""Built-in generation metrics: ROUGE (Korean-aware), sacreBLEU / chrF and exact match.

Registered through the ``sllmx`` entry-point group like any third-party plugin.  Each is computed
on greedy generations of the dev (and test) prompts against their references; pick one with
``data.metric=<name>`` and make one of its keys the dev metric with ``eval.metric=<key>``::

    python -m sllmx data=dialogsum data.metric=rouge eval.metric=rougeL

``rouge``
    ROUGE-1, ROUGE-2 and ROUGE-L F1 (Lin, 2004, "ROUGE: A Package for Automatic Evaluation of
    Summaries"), computed by Google's ``rouge_score`` with a tokenizer chosen per text: text with
    Hangul is split into morphemes by Kiwi (``kiwipiepy``; punctuation dropped), as Korean
    summarization work scores morpheme-tokenised text; other text uses ``rouge_score``'s default
    tokenizer with the Porter stemmer, the usual English setting.  ``rouge_score``'s default
    tokenizer alone keeps only ``[a-z0-9]`` and scores Hangul as empty.  Values in [0, 1].
``bleu``
    corpus BLEU (Papineni et al., 2002) and chrF (Popović, 2015) by ``sacrebleu`` with its
    defaults (13a tokenizer; chrF uses characters, so it suits Korean); sacreBLEU's 0–100 scale.
``exact_match``
    share of predictions equal to their reference after Unicode NFKC, case folding and
    whitespace collapsing; in [0, 1].
``perplexity``
    per-token perplexity of the split, exp(``eval_loss``) (``needs = "loss"``): computed at every evaluation
    of a trainer whose loss is the mean token cross-entropy (``sft``), with no ``data.metric``; lower is
    better.  Logged as ``eval_perplexity``; ``eval.metric=perplexity`` selects by it.
``preference``
    on preference pairs (DPO / ORPO dev splits; ``needs = "pair_logprobs"``): the share of
    pairs whose chosen answer the model gives a higher log-probability than the rejected one
    (``preference_accuracy``), and the mean log-probability margin (``logp_margin``, nats).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from sllmx import hookimpl
from sllmx.interfaces import NEEDS_LOSS, NEEDS_PAIR_LOGPROBS, Metric

HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
#: Kiwi part-of-speech tags left out of ROUGE tokens: punctuation and other symbols
#: (https://github.com/bab2min/kiwipiepy, tag set of the Sejong corpus)
PUNCT_TAGS = {"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "W_EMOJI"}


def _check(name: str, predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} references")


@lru_cache(maxsize=1)
def _kiwi() -> Any:
    from kiwipiepy import Kiwi

    return Kiwi()


class RougeTokenizer:
    """``tokenize(text) -> list[str]`` for ``rouge_score.RougeScorer``: Kiwi morphemes (lower-cased,
    punctuation dropped) for text with Hangul, else ``rouge_score``'s default tokenizer with stemming."""

    def __init__(self) -> None:
        from rouge_score.tokenizers import DefaultTokenizer

        self.english = DefaultTokenizer(use_stemmer=True)

    def tokenize(self, text: str) -> list[str]:
        if HANGUL.search(text or ""):
            return [t.form.lower() for t in _kiwi().tokenize(text) if t.tag not in PUNCT_TAGS]
        return self.english.tokenize(text or "")


class RougeMetric(Metric):
    """ROUGE-1/2/L F1 (rouge_score), Korean text split into morphemes by Kiwi."""

    name = "rouge"
    higher_is_better = True
    keys = ("rouge1", "rouge2", "rougeL")

    def compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Mean F1 over the pairs for each of ``keys``; all 0.0 for no pairs.

        Raises:
            ValueError: when the two lists differ in length.
        """
        from rouge_score.rouge_scorer import RougeScorer

        _check(self.name, predictions, references)
        if not predictions:
            return dict.fromkeys(self.keys, 0.0)
        scorer = RougeScorer(list(self.keys), tokenizer=RougeTokenizer())
        totals = dict.fromkeys(self.keys, 0.0)
        for pred, ref in zip(predictions, references):
            for key, score in scorer.score(ref, pred).items():  # score(target, prediction)
                totals[key] += score.fmeasure
        return {k: v / len(predictions) for k, v in totals.items()}


class BleuMetric(Metric):
    """Corpus BLEU and chrF (sacreBLEU, 0-100)."""

    name = "bleu"
    higher_is_better = True
    keys = ("bleu", "chrf")

    def compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """sacreBLEU's ``corpus_bleu`` and ``corpus_chrf`` with one reference per prediction.

        Raises:
            ValueError: when the two lists differ in length.
        """
        import sacrebleu

        _check(self.name, predictions, references)
        if not predictions:
            return {"bleu": 0.0, "chrf": 0.0}
        return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
                "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score)}


class ExactMatchMetric(Metric):
    """Share of predictions equal to the reference (NFKC, case and whitespace normalised)."""

    name = "exact_match"
    higher_is_better = True

    def compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Raises: ValueError when the two lists differ in length."""
        from sllmx.data.dedup import normalize

        _check(self.name, predictions, references)
        if not predictions:
            return {"exact_match": 0.0}
        same = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
        return {"exact_match": same / len(predictions)}


class PreferenceMetric(Metric):
    """Preference accuracy and log-probability margin of the model on preference pairs."""

    name = "preference"
    higher_is_better = True
    keys = ("preference_accuracy", "logp_margin")
    needs = NEEDS_PAIR_LOGPROBS

    def compute(self, predictions: list, references: list) -> dict[str, float]:
        """``predictions`` / ``references`` are the chosen / rejected answers' summed log-probabilities.

        Returns:
            ``preference_accuracy``: share of pairs with log p(chosen | prompt) > log p(rejected |
            prompt) (ties count as wrong), in [0, 1]; ``logp_margin``: mean of log p(chosen) −
            log p(rejected) in nats.  Unlike TRL's ``rewards/accuracies`` (DPO's implicit reward
            against the reference model, Rafailov et al., 2023, which is 0 before training because
            the policy equals the reference), these also score the untrained model.

        Raises:
            ValueError: when the two lists differ in length.
        """
        _check(self.name, predictions, references)
        if not predictions:
            return {"preference_accuracy": 0.0, "logp_margin": 0.0}
        n = len(predictions)
        return {"preference_accuracy": sum(c > r for c, r in zip(predictions, references)) / n,
                "logp_margin": sum(c - r for c, r in zip(predictions, references)) / n}


class PerplexityMetric(Metric):
    """Per-token perplexity of the split, exp(eval_loss), for trainers whose loss is the token NLL."""

    name = "perplexity"
    higher_is_better = False
    needs = NEEDS_LOSS

    def compute(self, losses: list[float]) -> dict[str, float]:
        """``losses`` holds the split's mean token cross-entropy (nats); exp of it, capped at exp(700)."""
        return {"perplexity": math.exp(min(float(losses[0]), 700.0))}


@hookimpl
def sllmx_metrics() -> list[Metric]:
    """Register rouge, bleu, exact_match, preference and perplexity."""
    return [RougeMetric(), BleuMetric(), ExactMatchMetric(), PreferenceMetric(), PerplexityMetric()]
