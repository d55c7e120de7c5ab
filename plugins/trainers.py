"""Built-in training objectives on TRL: sft, dpo, orpo, kto.

Each objective is a config dataclass beside its trainer, with TRL's field names.
sllmx decides the run-level arguments (output_dir, seed, evaluation, precision,
device, logging) and passes them to :meth:`Trainer.build`; the objective merges
them with its own fields and ``args`` (any further TRL option) into TRL's config
with the public glue of :mod:`sllmx.trl` (``TRLObjective``, ``trl_config``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional


from sllmx import hookimpl
from sllmx.config import TrainerConfig, option
from sllmx.interfaces import (LAYOUT_MESSAGES, LAYOUT_PREFERENCE, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT,
                              LAYOUT_UNPAIRED, Trainer)
from sllmx.trl import GlobalBatchOrder, TRLObjective, config_fields, trl_config

__all__ = ["DPO", "KTO", "ORPO", "SFT", "label_positions_loss"]

log = logging.getLogger("sllmx")


# ----------------------------------------------------------------------------- SFT


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """Supervised fine-tuning (``trl.SFTConfig``): next-token loss on the completion / assistant turns."""

    name: str = "sft"
    learning_rate: float = option(
        "peak learning rate of AdamW; default: the method's own for SFT (lora, dora, qlora: 1e-3, measured on the "
        "built-in task, benchmarks/RESULTS.md section 10), else 2e-4", "${sllmx_sft_learning_rate:${oc.select:method.name,null}}")
    completion_only_loss: Optional[bool] = option(
        "loss on the completion only for prompt/completion data (null: TRL's default, on)", None)
    packing: bool = option("pack several examples into one row (TRL's bfd packing, padding-free: each example keeps "
                          "its own attention and positions). Faster with flash-attention on a GPU; on CPU it is "
                          "slower than group_by_length (benchmarks/RESULTS.md)", False)
    train_sampling_strategy: str = option(
        "order of the training examples (transformers' option): group_by_length (batches of similar length, "
        "little padding; the measured fastest on CPU), random, sequential or batch_rebalance", "group_by_length",
        choices=("random", "sequential", "group_by_length", "batch_rebalance"))
    token_metrics: bool = option(
        "log TRL's entropy and mean_token_accuracy at every step (TRL's fused LM head over every position); off, "
        "the loss is the model's own cross-entropy (see label_positions_only): faster on CPU "
        "(benchmarks/RESULTS.md)", False)
    label_positions_only: bool = option(
        "with token_metrics off: apply the output head only where the next token has a label (the answer "
        "tokens), not at every position; the same loss and gradients, measured faster on CPU "
        "(benchmarks/RESULTS.md). false: the model's own loss on the full logits", True)


def label_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                         head: Any = None) -> Any:
    """Next-token cross-entropy of a causal LM, with the output head applied only where there is a label.

    The model's own loss projects every position through the output head (``(batch, seq_len, vocab)``
    logits, 49,152 columns for SmolLM2) and then ignores the positions labelled -100: the prompt, the
    padding and, for chat data, every turn but the assistant's.  Here a forward pre-hook on the output
    embeddings keeps only the hidden states whose next token has a label, so the head computes
    ``(1, n_labels, vocab)`` logits; whatever the model does to its logits afterwards (softcapping,
    scaling) still applies.  The loss is transformers' ``ForCausalLMLoss`` on those logits with the
    already shifted labels, i.e. the same quantity as the model's loss: the sum of the token
    cross-entropies divided by ``num_items_in_batch``, or their mean when it is None.  Prompt-learning
    PEFT models (virtual tokens prepended to the sequence) and padding-free batches (labels -100 at
    each example's first token) are handled.  The idea is the "compact" path of TRL's fused LM head
    (``trl.trainer.utils.add_fused_lm_head``), which TRL takes on Triton devices only.

    Args:
        model: a causal LM (``transformers`` or PEFT-wrapped) with ``get_output_embeddings()``.
        inputs: the collated batch: ``input_ids`` and ``labels`` of shape ``(batch, seq_len)``, plus
            ``attention_mask`` / ``position_ids``; not modified.
        num_items_in_batch: the count of labelled tokens over the accumulated batch (transformers'
            ``Trainer`` passes it), or None.
        head: the output embeddings module; None: ``model.get_output_embeddings()``.  Give it when
            ``model`` is a wrapper without that method (``DistributedDataParallel``: the unwrapped
            model's head, while the forward goes through the wrapper so gradients are synchronised).

    Returns:
        The scalar loss, or None when the model's output head is not called once on its hidden states
        (then use the model's own loss).
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    labels = inputs["labels"]
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    seq_len = labels.shape[1]
    targets = labels[:, 1:]
    keep = targets != -100
    gathered = []  # one True per call of the head that this hook served, False for any it could not

    def gather(module, args):
        gathered.append(not gathered and bool(args) and args[0].dim() == 3)
        if not gathered[-1]:
            return None
        hidden = args[0]
        # prompt learning prepends virtual tokens: the sequence's own positions are the last seq_len
        return (hidden[:, hidden.shape[1] - seq_len:-1][keep].unsqueeze(0), *args[1:])

    handle = (head if head is not None else model.get_output_embeddings()).register_forward_pre_hook(gather)
    try:
        outputs = model(**inputs, use_cache=False)
    finally:
        handle.remove()
    logits = outputs.logits
    n = int(keep.sum())
    if gathered != [True] or logits is None or tuple(logits.shape[:2]) != (1, n):
        return None
    if n == 0:  # no label in this batch: a zero that keeps the graph
        return logits.sum() * 0.0
    return ForCausalLMLoss(logits, None, logits.shape[-1], num_items_in_batch=num_items_in_batch,
                           shift_labels=targets[keep])


class SFT(TRLObjective):
    """Supervised fine-tuning with trl.SFTTrainer.

    ``token_metrics=False`` (the default) trains with :func:`label_positions_loss` (or, with
    ``label_positions_only=False``, the model's own loss on the full logits) instead of TRL's fused LM
    head, which also computes the entropy and top-1 accuracy of every token and, off a GPU, projects
    every position through the head; the loss is the same mean token cross-entropy.  The dev split is always
    evaluated in its own order, so ``eval_loss`` does not depend on ``train_sampling_strategy`` or the seed.
    """

    name = "sft"
    config = SFTTrainerConfig
    layouts = (LAYOUT_PROMPT_COMPLETION, LAYOUT_MESSAGES, LAYOUT_TEXT)
    loss_is_token_nll = True  # SFTTrainer's loss: mean cross-entropy over the completion tokens

    def trl_classes(self):
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer, SFTConfig

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """``trl.SFTTrainer``, with the model's own loss unless ``cfg.token_metrics``; see :class:`SFT`.
        (:func:`label_positions_loss` finds prompt learning's virtual tokens from the hidden states' length.)"""
        from torch.utils.data import SequentialSampler
        from transformers import Trainer as HFTrainer
        from trl import SFTConfig, SFTTrainer

        token_metrics = bool(cfg.token_metrics)
        label_positions_only = bool(cfg.label_positions_only)

        class SllmxSFTTrainer(GlobalBatchOrder, SFTTrainer):
            # label_positions_loss is used (until it returns None once: a model it cannot serve)
            sllmx_compact_head = label_positions_only

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                # TRL's own path where it computes something the model's loss does not (or when asked)
                if (token_metrics or self.args.loss_type != "nll" or self.aux_loss_enabled or return_outputs
                        or self.label_smoother is not None or self.compute_loss_func is not None):
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                loss = (label_positions_loss(model, inputs, num_items_in_batch,
                                             self.accelerator.unwrap_model(model).get_output_embeddings())
                        if self.sllmx_compact_head else None)
                if loss is None:  # a model whose output head cannot be applied to the label positions alone
                    if self.sllmx_compact_head:
                        log.warning("sft: %s does not call its output head once on its hidden states; the "
                                    "loss uses the full logits", type(model).__name__)
                        self.sllmx_compact_head = False
                    inputs["use_cache"] = False
                    return HFTrainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)
                # as Trainer.compute_loss: num_items_in_batch counts every rank's tokens, DDP averages the gradients
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size())
                return loss

            def _get_eval_sampler(self, eval_dataset):
                # transformers length-groups the dev split too (seeded): its batches, and so eval_loss (a mean
                # of batch means), would change with the sampling strategy and the seed.  With several
                # processes accelerate deals these batches out in turn, so each batch stays the same (but
                # for a last one that it fills up with repeated rows when the split does not divide evenly)
                if eval_dataset is None:
                    return super()._get_eval_sampler(eval_dataset)
                return SequentialSampler(eval_dataset)

        fields = config_fields(cfg)
        for key in ("token_metrics", "label_positions_only"):  # sllmx's own options, not SFTConfig's
            fields.pop(key, None)
        return SllmxSFTTrainer(model=model, args=trl_config(SFTConfig, fields, args), processing_class=tokenizer,
                               train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks)


# ----------------------------------------------------------------------------- DPO


@dataclass
class DPOTrainerConfig(TrainerConfig):
    """Direct Preference Optimization (Rafailov et al., 2023; ``trl.DPOConfig``)."""

    name: str = "dpo"
    learning_rate: float = option("peak learning rate (DPO wants far less than SFT)", 5e-6)
    beta: float = option("strength of the KL penalty towards the reference model", 0.1, gt=0)
    loss_type: list[str] = option("TRL loss names, combined by loss_weights: [sigmoid] (DPO), [ipo] (Azar et al., "
                                 "2023), [hinge], [robust], ...; e.g. trainer.loss_type=[ipo]", ["sigmoid"],
                                 # the names trl.DPOTrainer accepts (tests/test_validate.py compares them with TRL's)
                                 choices=("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                                          "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                                          "sft", "sigmoid_norm"))

    def check(self, key: str) -> Optional[str]:
        """At least one loss."""
        return super().check(key) or (f"{key}.loss_type=[]: name at least one loss, e.g. [sigmoid]"
                                      if not self.loss_type else None)


class DPO(TRLObjective):
    """Direct Preference Optimization with trl.DPOTrainer (trainer.loss_type=[ipo] gives IPO)."""

    name = "dpo"
    config = DPOTrainerConfig
    layouts = (LAYOUT_PREFERENCE,)

    def trl_classes(self):
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig


# ----------------------------------------------------------------------------- ORPO


@dataclass
class ORPOTrainerConfig(TrainerConfig):
    """Odds Ratio Preference Optimization (Hong et al., 2024; ``trl.experimental.orpo.ORPOConfig``):
    SFT and preference in one loss, no reference model."""

    name: str = "orpo"
    learning_rate: float = option("peak learning rate", 8e-6)
    beta: float = option("weight of the odds-ratio term (lambda in the paper)", 0.1, gt=0)


class ORPO(TRLObjective):
    """Odds Ratio Preference Optimization with trl.experimental.orpo.ORPOTrainer."""

    name = "orpo"
    config = ORPOTrainerConfig
    layouts = (LAYOUT_PREFERENCE,)

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """:class:`TRLObjective`'s build; with prompt learning (``virtual_tokens``, the method's answer) the
        logits of the virtual tokens are left out of ORPO's loss."""
        hf_trainer = super().build(model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks)
        hf_trainer.sllmx_virtual_tokens = int(virtual_tokens)
        return hf_trainer

    def trl_classes(self):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        class CountingORPOTrainer(ORPOTrainer):
            """ORPOTrainer that counts the tokens it trains on (its batches carry ``chosen_*`` /
            ``rejected_*`` tensors but no ``input_ids``, which ``Trainer`` needs to count them),
            and that works with prompt tuning: a prompt-learning PEFT model returns logits for its
            ``sllmx_virtual_tokens`` virtual tokens too (the method says how many), which ORPO's loss
            (unlike DPO's) does not strip."""

            sllmx_virtual_tokens = 0

            def concatenated_forward(self, model, batch):
                n = self.sllmx_virtual_tokens
                if not n:
                    return super().concatenated_forward(model, batch)
                forward = model.forward

                def without_virtual_tokens(*args, **kwargs):
                    out = forward(*args, **kwargs)
                    out.logits = out.logits[:, n:, :]
                    return out

                model.forward = without_virtual_tokens
                try:
                    return super().concatenated_forward(model, batch)
                finally:
                    del model.forward

            def _track_num_input_tokens(self, inputs):
                masks = [inputs[k] for k in ("chosen_attention_mask", "rejected_attention_mask") if k in inputs]
                if masks:
                    self.state.num_input_tokens_seen += int(sum(int(m.sum()) for m in masks))
                else:
                    super()._track_num_input_tokens(inputs)

        return CountingORPOTrainer, ORPOConfig


# ----------------------------------------------------------------------------- KTO


@dataclass
class KTOTrainerConfig(TrainerConfig):
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024; ``trl.KTOConfig``): unpaired good/bad labels."""

    name: str = "kto"
    learning_rate: float = option("peak learning rate", 5e-6)
    beta: float = option("strength of the KL penalty towards the reference model", 0.1, gt=0)
    desirable_weight: float = option("loss weight of desirable (label true) examples", 1.0, ge=0)
    undesirable_weight: float = option("loss weight of undesirable (label false) examples", 1.0, ge=0)


class KTO(TRLObjective):
    """Kahneman-Tversky Optimization with trl.KTOTrainer."""

    name = "kto"
    config = KTOTrainerConfig
    layouts = (LAYOUT_UNPAIRED,)

    def trl_classes(self):
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig


@hookimpl
def sllmx_trainers() -> list[Trainer]:
    """Register sft, dpo, orpo and kto."""
    return [SFT(), DPO(), ORPO(), KTO()]
