"""Built-in training objectives on TRL: sft, cpt, dpo, orpo, kto, cpo, simpo, grpo.

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
from sllmx.trl import (GlobalBatchOrder, TRLObjective, config_fields, keeping_reference_adapter, label_positions_head,
                       trl_config)

__all__ = ["CPO", "CPT", "DPO", "GRPO", "KTO", "ORPO", "SFT", "SimPO", "label_positions_loss", "reward_functions"]

log = logging.getLogger("sllmx")


#: the help of every trainer's ``learning_rate`` (its default is ``sllmx.defaults``' interpolation)
LEARNING_RATE_HELP = ("peak learning rate of AdamW; default: by method family (adapter, prompt, full) and objective, "
                      "from published practice (docs/defaults.md; run.json's defaults says which applied)")
#: LoRA's best learning rate is about 10x full fine-tuning's, across SFT and RL (Schulman et al., 2025, "LoRA
#: Without Regret", Thinking Machines Lab); the adapter rows of the preference objectives use it
LORA_WITHOUT_REGRET = "10x the full fine-tuning rate (Schulman et al., 2025, \"LoRA Without Regret\")"

# ----------------------------------------------------------------------------- SFT


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """Supervised fine-tuning (``trl.SFTConfig``): next-token loss on the completion / assistant turns."""

    name: str = "sft"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},sft,2e-4}")
    completion_only_loss: Optional[bool] = option(
        "loss on the completion only for prompt/completion data (null: TRL's default, on)", None)
    packing: bool = option("pack several examples into one row (TRL's bfd packing, padding-free: each example keeps "
                          "its own attention and positions). Faster with flash-attention on a GPU; on CPU it is "
                          "slower than group_by_length (benchmarks/RESULTS.md)", False)
    packing_strategy: str = option(
        "with packing (TRL's option): bfd (best-fit decreasing; an example longer than max_length is truncated), "
        "bfd_split (such an example is split over rows) or wrapped (the examples concatenated, each ending in EOS, "
        "and cut every max_length tokens: continued pre-training's blocks)", "bfd",
        choices=("bfd", "bfd_split", "wrapped"))
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


def _adds_to_model_loss(model: Any) -> bool:
    """Whether ``model``'s forward adds a training term of its own to the loss it computes from labels (a
    trainable PEFT AdaLoRA model: the orthogonality regulariser), which :func:`label_positions_loss` would leave
    out.  (A loaded AdaLoRA adapter, in inference mode, adds nothing: PEFT cannot even compute it then.)"""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    return str(getattr(config, "peft_type", "")).endswith("ADALORA") and not getattr(config, "inference_mode", True)


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
    learning_rates = {
        "adapter": (1e-3, "measured on SmolLM2-135M and the built-in task: json_exact 0 at 2e-4, 0.31 at 1e-3 "
                          "(benchmarks/RESULTS.md section 10); the QLoRA paper's 2e-4 is for 7B-65B (Dettmers et al., "
                          "2023)"),
        "full": (1e-4, "a tenth of the adapter rate (Schulman et al., 2025, \"LoRA Without Regret\"); between "
                       "Zephyr-7B's 2e-5 (Tunstall et al., 2023; TRL's SFTConfig default) and the SmolLM2-135M/360M "
                       "recipe's 1e-3 (alignment-handbook recipes/smollm2)"),
        "prompt": (3e-2, "PEFT's prompt-tuning causal-LM example; Lester et al. (2021) trained at 0.3 with Adafactor"),
    }
    layouts = (LAYOUT_PROMPT_COMPLETION, LAYOUT_MESSAGES, LAYOUT_TEXT)
    loss_is_token_nll = True  # SFTTrainer's loss: mean cross-entropy over the completion tokens

    def truncation_length(self, cfg):
        """None with ``packing_strategy`` bfd_split or wrapped (a long example is split over rows, nothing is
        cut), else ``max_length``."""
        if cfg.get("packing") and cfg.get("packing_strategy") in ("bfd_split", "wrapped"):
            return None
        return super().truncation_length(cfg)

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
        label_positions_head()  # TRL's fused head, used with token_metrics
        # AdaLoRA adds its orthogonality regulariser to the model's loss when the forward gets labels (TRL's
        # SFTTrainer without token metrics); label_positions_loss calls it without: train on the model's own loss
        # for it.  eval_loss stays the plain NLL (as a reloaded adapter gives it); with token_metrics, TRL's fused
        # head computes the loss itself and the regulariser is left out, as in TRL
        regularised = _adds_to_model_loss(model)

        class SllmxSFTTrainer(GlobalBatchOrder, SFTTrainer):
            # label_positions_loss is used (until it returns None once: a model it cannot serve)
            sllmx_compact_head = label_positions_only

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                # TRL's own path where it computes something the model's loss does not (or when asked)
                if (token_metrics or self.args.loss_type != "nll" or self.aux_loss_enabled or return_outputs
                        or self.label_smoother is not None or self.compute_loss_func is not None):
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                compact = self.sllmx_compact_head and not (regularised and model.training)
                loss = (label_positions_loss(model, inputs, num_items_in_batch,
                                             self.accelerator.unwrap_model(model).get_output_embeddings())
                        if compact else None)
                if loss is None:  # a model whose output head cannot be applied to the label positions alone
                    if compact:
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


# ----------------------------------------------------------------------------- CPT


@dataclass
class CPTTrainerConfig(SFTTrainerConfig):
    """Continued pre-training (``trl.SFTConfig`` on plain text): the documents joined, each ending in EOS, cut
    into ``max_length``-token blocks (TRL's wrapped packing, no padding but in the last block), next-token loss
    on every token; ``eval_perplexity`` on the dev blocks."""

    name: str = "cpt"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},cpt,1e-4}")
    max_length: Optional[int] = option("block size: tokens per training row, cut from the concatenated documents",
                                       512, ge=2)
    packing: bool = option("cut the concatenated documents into blocks (required: without it each document would "
                           "be truncated to max_length)", True)
    packing_strategy: str = option("wrapped: concatenate and cut every max_length tokens (run_clm's group_texts); "
                                   "bfd_split: pack whole documents, splitting the long ones", "wrapped",
                                   choices=("wrapped", "bfd_split"))
    train_sampling_strategy: str = option("order of the blocks (transformers' option)", "random",
                                          choices=("random", "sequential", "group_by_length", "batch_rebalance"))

    def check(self, key: str) -> Optional[str]:
        """Packing on."""
        return super().check(key) or (f"{key}.packing=false: continued pre-training cuts the documents into "
                                      f"blocks; use trainer=sft for text rows truncated to max_length"
                                      if not self.packing else None)


class CPT(SFT):
    """Continued pre-training (domain-adaptive pre-training, Gururangan et al., 2020, "Don't Stop Pretraining")
    with trl.SFTTrainer on ``text`` rows: TRL appends EOS to each document and its wrapped packing concatenates
    and cuts them into ``max_length`` blocks (as transformers' ``run_clm.py`` ``group_texts``).  The dev split
    is packed the same way, so ``eval_loss`` is the mean NLL per dev token and ``eval_perplexity`` its exp."""

    name = "cpt"
    config = CPTTrainerConfig
    learning_rates = {
        "adapter": (1e-4, "LLaMA-Factory's LoRA pre-training example (examples/train_lora/llama3_lora_pretrain.yaml)"),
        "full": (1e-5, "a tenth of the adapter rate (Schulman et al., 2025, \"LoRA Without Regret\")"),
        "prompt": (3e-3, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }
    layouts = (LAYOUT_TEXT,)


# ----------------------------------------------------------------------------- DPO


@dataclass
class DPOTrainerConfig(TrainerConfig):
    """Direct Preference Optimization (Rafailov et al., 2023; ``trl.DPOConfig``)."""

    name: str = "dpo"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},dpo,5e-6}")
    beta: float = option("strength of the KL penalty towards the reference model", 0.1, gt=0)
    loss_type: list[str] = option("TRL loss names, combined by loss_weights: [sigmoid] (DPO), [ipo] (Azar et al., "
                                 "2023), [hinge], [robust], ...; e.g. trainer.loss_type=[ipo]", ["sigmoid"],
                                 # the names trl.DPOTrainer accepts (tests/test_validate.py compares them with TRL's)
                                 choices=("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                                          "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                                          "sft", "sigmoid_norm"))
    prefix_sharing: bool = option("score each pair as one row, prompt + chosen + rejected, the rejected answer "
                                  "masked from the chosen one (Wang et al., 2024, \"Accelerating Direct Preference "
                                  "Optimization with Prefix Sharing\", arXiv:2410.20305): the prompt goes through "
                                  "the model once instead of twice, and the first tokens every pair of a batch "
                                  "shares (a system prompt) once per batch, as the rows' key-value cache; the same "
                                  "log-probabilities (sllmx's, not TRL's; sllmx.shared_prompt); false: TRL's two "
                                  "rows per pair", True)

    def check(self, key: str) -> Optional[str]:
        """At least one loss."""
        return super().check(key) or (f"{key}.loss_type=[]: name at least one loss, e.g. [sigmoid]"
                                      if not self.loss_type else None)


def _dev_reference_once(base: type) -> type:
    """``base`` (TRL's DPOTrainer) computing the dev split's reference log-probabilities once per trainer instead of
    at every evaluation: the reference does not change during training (the base under a disabled adapter, TRL's
    frozen ``"ref"`` adapter, or a separate reference model), so every evaluation after the first runs the policy
    alone.

    At the first evaluation of its own dev split the trainer computes each dev pair's reference log-probabilities
    with TRL's ``compute_ref_log_probs``, in eval mode, in sequential batches of ``per_device_eval_batch_size`` (as
    TRL's ``precompute_ref_log_probs`` does, which sllmx leaves off: it would also precompute the training split
    and cache the result on disk under a hash of the weights alone), and keeps them in memory as TRL's
    ``ref_chosen_logps`` / ``ref_rejected_logps`` columns, which TRL's loss reads instead of a reference forward.
    Left to TRL: a dataset passed to ``evaluate``, several dev splits, TRL's own precomputation, vision datasets,
    and ``sync_ref_model`` (TR-DPO, whose reference moves).  The first evaluation's ``eval_runtime`` leaves the
    reference pass out."""
    import torch
    from datasets import Dataset

    class DevReferenceOnce(base):
        #: (the dev split, the same with its reference log-probabilities), after the first evaluation of that split
        sllmx_dev_reference = None

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if (eval_dataset is not None or self.precompute_ref_logps or self.args.sync_ref_model
                    or self._is_vision_dataset or not isinstance(self.eval_dataset, Dataset)):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            dev = self.eval_dataset
            if self.sllmx_dev_reference is None or self.sllmx_dev_reference[0] is not dev:
                self.sllmx_dev_reference = dev, self._sllmx_reference_columns(dev)
            self.eval_dataset, self.precompute_ref_logps = self.sllmx_dev_reference[1], True
            try:
                return super().evaluate(None, ignore_keys, metric_key_prefix)
            finally:
                self.eval_dataset, self.precompute_ref_logps = dev, False

        def _sllmx_reference_columns(self, dataset):
            from torch.utils.data import DataLoader

            loader = self.accelerator.prepare(DataLoader(
                dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers, shuffle=False))
            model = self.ref_model or self.model
            training = model.training
            model.eval()
            chosen, rejected = [], []
            try:
                for batch in loader:
                    c, r = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
                    chosen.append(c.float().cpu())
                    rejected.append(r.float().cpu())
            finally:
                model.train(training)
            return (dataset.add_column("ref_chosen_logps", torch.cat(chosen).numpy())
                    .add_column("ref_rejected_logps", torch.cat(rejected).numpy()))

    DevReferenceOnce.__name__ = DevReferenceOnce.__qualname__ = base.__name__
    return DevReferenceOnce


class DPO(TRLObjective):
    """Direct Preference Optimization with trl.DPOTrainer (trainer.loss_type=[ipo] gives IPO)."""

    name = "dpo"
    config = DPOTrainerConfig
    reference_model = True
    learning_rates = {
        "adapter": (5e-4, "TRL's QLoRA DPO example for Llama-2 (examples/research_projects/stack_llama_2; Hugging Face "
                          "blog \"Fine-tune Llama 2 with DPO\", 2023) trains at 5e-4; measured on SmolLM2-135M, "
                          "16 LoRA steps on HH-RLHF move dev eval_loss 0.6931 -> 0.6815 and TRL's "
                          "rewards/accuracies to 0.64, where 5e-5 and Zephyr's QLoRA recipe rate 5e-6 move neither "
                          "(benchmarks/RESULTS.md sections 13, 18)"),
        "full": (1e-6, "TRL's DPOConfig default and the SmolLM2 DPO recipe (alignment-handbook recipes/smollm2); "
                       "Zephyr-7B used 5e-7 (Tunstall et al., 2023)"),
        "prompt": (1.5e-2, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }
    layouts = (LAYOUT_PREFERENCE,)
    own_options = ("prefix_sharing",)

    def trl_classes(self):
        from trl import DPOConfig, DPOTrainer

        return _dev_reference_once(DPOTrainer), DPOConfig

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """``trl.DPOTrainer``; with ``cfg.prefix_sharing`` its policy and reference forwards score each pair as
        one packed row (:func:`sllmx.shared_prompt.share_prompts`, installed under the fused LM head TRL adds)."""
        from sllmx.shared_prompt import share_prompts

        hf_trainer = super().build(model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks)
        if cfg.prefix_sharing:
            policy = hf_trainer.model
            policy = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            if not all(share_prompts(m) for m in (policy, hf_trainer.ref_model) if m is not None):
                log.warning("dpo: prefix_sharing needs TRL's fused LM head, an sdpa or eager attention kernel and "
                            "an architecture of sllmx.shared_prompt.ARCHITECTURES; %s scores each pair as two rows",
                            type(policy).__name__)
        return hf_trainer


# ----------------------------------------------------------------------------- ORPO


@dataclass
class ORPOTrainerConfig(TrainerConfig):
    """Odds Ratio Preference Optimization (Hong et al., 2024; ``trl.experimental.orpo.ORPOConfig``):
    SFT and preference in one loss, no reference model."""

    name: str = "orpo"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},orpo,5e-6}")
    beta: float = option("weight of the odds-ratio term (lambda in the paper)", 0.1, gt=0)
    prefix_sharing: bool = option("score each pair as one row, prompt + chosen + rejected, through TRL's fused LM "
                                  "head (as trainer=dpo does; sllmx.shared_prompt): the same losses from the prompt "
                                  "computed once and no full-vocabulary logits; false: TRL's two rows and logits",
                                  True)


def _reference_free_pair_trainer(base: type) -> type:
    """``base`` (TRL's ORPOTrainer or CPOTrainer, which share their batch layout) made to count the tokens it
    trains on (its batches carry ``chosen_*`` / ``rejected_*`` tensors but no ``input_ids``, which
    ``Trainer`` needs to count them) and to work with prompt tuning: a prompt-learning PEFT model returns
    logits for its ``sllmx_virtual_tokens`` virtual tokens too (the method says how many), which these
    losses (unlike DPO's) do not strip."""

    class Counting(base):
        sllmx_virtual_tokens = 0
        #: answer ORPO's forward from TRL's fused LM head, one packed row per pair (set by ORPO.build)
        sllmx_fused_forward = False

        def concatenated_forward(self, model, batch):
            n = self.sllmx_virtual_tokens
            if self.sllmx_fused_forward and not self.is_encoder_decoder and not self.aux_loss_enabled:
                return _orpo_fused_forward(self, model, batch)
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

    Counting.__name__ = Counting.__qualname__ = f"Counting{base.__name__}"
    return Counting


def _orpo_fused_forward(trainer, model, batch):
    """TRL ORPOTrainer's ``concatenated_forward`` (TRL 1.x, ``trl.experimental.orpo``) computed through TRL's fused LM
    head (``trl.trainer.utils.add_fused_lm_head``) instead of the ``(2B, L, vocabulary)`` logits.

    The chosen rows are scored at every token (ORPO's NLL term covers prompt and answer, Hong et al., 2024, eq. 6 as
    TRL implements it), the rejected rows at their answer tokens only; with ``share_prompts`` installed under the
    head each pair is one packed row.  Returns TRL's tuple: the answers' mean log-probabilities ``(B,)`` chosen and
    rejected, the per-position logit means (mean over the vocabulary) at the scored positions of the chosen and
    the rejected rows (1-D: the positions that predict a scored token; TRL returns the full logits, whose mean
    over every position, padding included, its metrics ``logits/chosen`` / ``logits/rejected`` log), and the
    chosen rows' mean token NLL.  In fp32 the losses equal TRL's (tests/test_speed.py compares them and their
    gradients to 1e-5); under bf16 autocast the fused head's log-softmax runs in fp32 where TRL's takes the bf16
    logits."""
    import torch

    concatenated = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value,
                                               device=trainer.accelerator.device)
    ids = concatenated["concatenated_input_ids"]
    mask = concatenated["concatenated_attention_mask"]
    answers = concatenated["concatenated_labels"]
    b = batch["chosen_labels"].shape[0]
    labels = torch.cat([ids[:b].masked_fill(mask[:b] == 0, -100), answers[b:]])
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    scored = labels[:, 1:] != -100
    in_answer = answers[:, 1:] != -100
    nll = -(out.log_probs[:b] * scored[:b]).sum() / scored[:b].sum()
    mean_logps = (out.log_probs * in_answer).sum(-1) / in_answer.sum(-1)
    return (mean_logps[:b], mean_logps[b:], out.mean_logits[:b][scored[:b]], out.mean_logits[b:][scored[b:]], nll)


class _ReferenceFree(TRLObjective):
    """A preference objective with no reference model on a TRL trainer built by
    :func:`_reference_free_pair_trainer`."""

    layouts = (LAYOUT_PREFERENCE,)

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """:class:`TRLObjective`'s build; with prompt learning (``virtual_tokens``, the method's answer) the
        logits of the virtual tokens are left out of the loss."""
        hf_trainer = super().build(model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks)
        hf_trainer.sllmx_virtual_tokens = int(virtual_tokens)
        return hf_trainer


class ORPO(_ReferenceFree):
    """Odds Ratio Preference Optimization with trl.experimental.orpo.ORPOTrainer."""

    name = "orpo"
    config = ORPOTrainerConfig
    learning_rates = {
        "adapter": (5e-5, LORA_WITHOUT_REGRET),
        "full": (5e-6, "Mistral-ORPO (Hong et al., 2024) and the alignment-handbook's reproduction of it"),
        "prompt": (1.5e-3, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }

    own_options = ("prefix_sharing",)

    def trl_classes(self):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return _reference_free_pair_trainer(ORPOTrainer), ORPOConfig

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """TRL's ORPOTrainer; with ``cfg.prefix_sharing`` its forward goes through TRL's fused LM head with one
        packed row per pair (:func:`_orpo_fused_forward`, :func:`sllmx.shared_prompt.share_prompts`; a batch that
        cannot be packed, e.g. left-padded, goes through the head as two rows per pair).  TRL's own forward, with
        a warning where the user may expect the fused one, for prompt learning (prompt and prefix tuning), an
        output head that is not a plain ``nn.Linear`` (an adapter on ``lm_head``, PEFT's trainable tokens: the
        fused head reads the base weight only), a ``forward`` already replaced by something other than sllmx, or a
        model ``share_prompts`` does not pack (attention kernel, architecture, router logits)."""
        import torch
        from trl.trainer.utils import add_fused_lm_head

        from sllmx.shared_prompt import share_prompts

        hf_trainer = super().build(model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens)
        peft_config = getattr(hf_trainer.model, "active_peft_config", None)
        if not cfg.prefix_sharing or virtual_tokens or getattr(peft_config, "is_prompt_learning", False):
            return hf_trainer
        base = hf_trainer.model
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        head, replaced = base.get_output_embeddings(), vars(base).get("forward")
        if type(head) is not torch.nn.Linear or (replaced is not None
                                                 and not getattr(replaced, "sllmx_shared_prompt", False)):
            log.warning("orpo: prefix_sharing needs a plain linear output head (TRL's fused head reads its weight "
                        "only) and the model's own forward; %s has %s%s: TRL's two rows and logits",
                        type(base).__name__, type(head).__name__, " and a replaced forward" if replaced else "")
            return hf_trainer
        added = replaced is None  # else an earlier build (the test split's trainer) installed the head and packing
        if added:
            add_fused_lm_head(base, outputs=("log_probs", "mean_logits"))
        if share_prompts(base):
            hf_trainer.sllmx_fused_forward = True
        else:
            log.warning("orpo: prefix_sharing needs an sdpa or eager attention kernel, an architecture of "
                        "sllmx.shared_prompt.ARCHITECTURES and no MoE router logits; %s scores each pair as TRL's "
                        "two rows", type(base).__name__)
            if added:
                del base.forward
        return hf_trainer


# ----------------------------------------------------------------------------- CPO, SimPO


@dataclass
class CPOTrainerConfig(TrainerConfig):
    """Contrastive Preference Optimization (Xu et al., 2024, "Contrastive Preference Optimization: Pushing the
    Boundaries of LLM Performance in Machine Translation"; ``trl.experimental.cpo.CPOConfig``): a preference
    loss on the policy's own log-probabilities (no reference model) plus ``cpo_alpha`` times the chosen answers'
    NLL.  ``loss_type=simpo`` with ``cpo_alpha=0`` is SimPO (``trainer=simpo``)."""

    name: str = "cpo"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},cpo,1e-6}")
    beta: float = option("temperature of the preference loss", 0.1, gt=0)
    loss_type: str = option("sigmoid (CPO), hinge, ipo (Azar et al., 2023) or simpo (Meng et al., 2024; length-"
                           "normalised log-probabilities with a target margin simpo_gamma)", "sigmoid",
                           choices=("sigmoid", "hinge", "ipo", "simpo"))
    cpo_alpha: float = option("weight of the NLL of the chosen answers (CPO's behaviour-cloning term); 0: none",
                             1.0, ge=0)
    simpo_gamma: float = option("SimPO's target reward margin (loss_type=simpo)", 0.5, ge=0)
    label_smoothing: float = option("probability that a pair's label is flipped (conservative loss)", 0.0, ge=0,
                                   lt=0.5)


class CPO(_ReferenceFree):
    """Contrastive Preference Optimization with trl.experimental.cpo.CPOTrainer (loss_type=ipo, hinge, simpo)."""

    name = "cpo"
    config = CPOTrainerConfig
    learning_rates = {
        "adapter": (1e-5, LORA_WITHOUT_REGRET),
        "full": (1e-6, "TRL's CPOConfig default"),
        "prompt": (3e-4, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }

    def trl_classes(self):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return _reference_free_pair_trainer(CPOTrainer), CPOConfig


@dataclass
class SimPOTrainerConfig(CPOTrainerConfig):
    """Simple Preference Optimization (Meng et al., 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward"): the average log-probability of an answer as its reward, a target margin
    ``simpo_gamma``, no reference model and no NLL term; TRL's CPOTrainer with ``loss_type=simpo`` and
    ``cpo_alpha=0``.  The paper's beta is 2.0-2.5 with gamma/beta about 0.5."""

    name: str = "simpo"
    learning_rate: float = option(LEARNING_RATE_HELP,
                                  "${sllmx_learning_rate:${oc.select:method.name,null},simpo,1e-6}")
    beta: float = option("reward scale (the paper: 2.0-2.5)", 2.0, gt=0)
    loss_type: str = option("simpo (the other CPO losses are trainer=cpo's)", "simpo", choices=("simpo",))
    cpo_alpha: float = option("weight of the chosen answers' NLL (0 in SimPO; CPO-SimPO adds it)", 0.0, ge=0)
    simpo_gamma: float = option("target reward margin (the paper: gamma/beta about 0.5)", 1.0, ge=0)


class SimPO(CPO):
    """SimPO with trl.experimental.cpo.CPOTrainer (loss_type=simpo, cpo_alpha=0)."""

    name = "simpo"
    config = SimPOTrainerConfig
    learning_rates = {
        "adapter": (1e-5, LORA_WITHOUT_REGRET),
        "full": (1e-6, "SimPO's 7B-8B runs trained at 3e-7 to 1e-6 (Meng et al., 2024); TRL's CPOConfig "
                       "default 1e-6"),
        "prompt": (3e-4, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }


# ----------------------------------------------------------------------------- KTO


@dataclass
class KTOTrainerConfig(TrainerConfig):
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024; ``trl.KTOConfig``): unpaired good/bad labels."""

    name: str = "kto"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},kto,1e-6}")
    beta: float = option("strength of the KL penalty towards the reference model", 0.1, gt=0)
    desirable_weight: float = option("loss weight of desirable (label true) examples", 1.0, ge=0)
    undesirable_weight: float = option("loss weight of undesirable (label false) examples", 1.0, ge=0)


class KTO(TRLObjective):
    """Kahneman-Tversky Optimization with trl.KTOTrainer."""

    name = "kto"
    config = KTOTrainerConfig
    reference_model = True
    learning_rates = {
        "adapter": (1e-5, LORA_WITHOUT_REGRET),
        "full": (1e-6, "TRL's KTOConfig default"),
        "prompt": (3e-4, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }
    layouts = (LAYOUT_UNPAIRED,)

    def trl_classes(self):
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig


# ----------------------------------------------------------------------------- GRPO


@dataclass
class GRPOTrainerConfig(TrainerConfig):
    """Group Relative Policy Optimization (Shao et al., 2024, "DeepSeekMath"; ``trl.GRPOConfig``): for each prompt
    ``num_generations`` sampled completions, scored by reward plugins; each completion's advantage is its reward
    minus its group's mean (over the group's standard deviation)."""

    name: str = "grpo"
    learning_rate: float = option(LEARNING_RATE_HELP, "${sllmx_learning_rate:${oc.select:method.name,null},grpo,1e-6}")
    rewards: list[str] = option("reward plugins whose weighted sum GRPO maximises (python -m sllmx.plugins lists the "
                                "kind reward), e.g. [json_valid,json_fields] for the built-in task", [],
                                plugin="reward")
    reward_weights: Optional[list[float]] = option(
        "weight of each of rewards, in order (null: 1 each); a reward whose lower is better is negated as well", None)
    num_generations: int = option("completions sampled per prompt (the group; TRL's default is 8); "
                                  "per_device_train_batch_size must be a multiple of it", 4, ge=2)
    max_completion_length: int = option("tokens generated per completion at most (TRL's default is 512)", 64, ge=1)
    temperature: float = option("sampling temperature of the completions", 1.0, gt=0)
    beta: float = option("KL penalty towards the reference model (for a PEFT model TRL keeps a frozen copy of the "
                         "adapter as it starts); TRL's default 0 keeps no reference", 0.0, ge=0)
    loss_type: str = option("TRL's loss: dapo (tokens of the whole batch), grpo (per sequence), dr_grpo, bnpo, "
                            "cispo, sapo, luspo, vespo", "dapo",
                            choices=("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"))
    max_length: Optional[int] = option("not GRPO's: prompts are not truncated (completions stop at "
                                       "max_completion_length); leave it null", None)
    per_device_train_batch_size: int = option("completions per device per step: prompts x num_generations", 8, ge=1)
    per_device_eval_batch_size: int = option("completions per device per dev step: prompts x num_generations", 8,
                                             ge=1)

    def check(self, key: str) -> Optional[str]:
        """At least one reward, weights matching them, batches of whole groups."""
        reason = super().check(key)
        if reason:
            return reason
        if self.max_length is not None:
            return (f"{key}.max_length={self.max_length}: GRPO does not truncate prompts; bound the completions with "
                    f"{key}.max_completion_length")
        if not self.rewards:
            return (f"{key}.rewards is empty: name the reward plugins to maximise, e.g. "
                    f"'{key}.rewards=[json_valid,json_fields]' (python -m sllmx.plugins lists them)")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            return (f"{key}.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards "
                    f"({', '.join(self.rewards)})")
        for batch in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, batch) % self.num_generations:
                return (f"{key}.{batch}={getattr(self, batch)} is not a multiple of {key}.num_generations="
                        f"{self.num_generations} (each batch holds whole groups of completions)")
        return None


def reward_functions(names: list[str], weights: Optional[list[float]] = None) -> tuple[list[Any], list[float]]:
    """TRL reward functions and weights for the reward plugins ``names`` (``GRPOTrainer(reward_funcs=...)``,
    ``GRPOConfig(reward_weights=...)``).

    Each function is named after its plugin (TRL logs ``rewards/<name>/mean``), takes TRL's ``prompts``,
    ``completions`` (text, or chat messages whose last content is the answer) and the dataset's ``reference``
    column, and returns the plugin's :meth:`~sllmx.interfaces.Reward.score`.  A weight is the user's (1 by
    default) times -1 for a reward whose lower is better, so the weighted sum is always maximised.

    Raises:
        SllmxError: an unknown reward name (listing those installed).
    """
    from sllmx.errors import SllmxError
    from sllmx.interfaces import REWARD_READS
    from sllmx.plugins import registry

    reg = registry()
    funcs, signed = [], []
    for i, name in enumerate(names):
        reward = reg.get("reward", name)
        unknown = sorted(set(reward.reads) - set(REWARD_READS))
        if unknown:
            raise SllmxError(f"reward {name!r} ({reg.dist_of('reward', name)}) reads {unknown[0]!r}; a reward reads "
                             f"{', '.join(REWARD_READS)}")

        def fn(prompts, completions, reference=None, _reward=reward, **_):
            texts = [(c[-1].get("content") or "") if isinstance(c, list) and c else (c or "") for c in completions]
            refs = list(reference) if "reference" in _reward.reads and reference is not None else None
            return _reward.score(texts, refs, list(prompts))

        fn.__name__ = fn.__qualname__ = name
        funcs.append(fn)
        weight = float(weights[i]) if weights else 1.0
        signed.append(weight if reward.higher_is_better else -weight)
    return funcs, signed


def _with_reference(dataset: Any) -> Any:
    """prompt/completion rows as GRPO reads them: the prompt, and the completion's text as ``reference`` (TRL does
    not pass a column named ``completion`` to reward functions)."""
    if dataset is None or "completion" not in dataset.column_names:
        return dataset

    def text(row):
        c = row["completion"]
        return {"reference": c[-1]["content"] if isinstance(c, list) and c else c}

    return dataset.map(text, remove_columns=["completion"])


class GRPO(TRLObjective):
    """Group Relative Policy Optimization with trl.GRPOTrainer and rewards from reward plugins
    (``trainer.rewards``); its dev metric is ``eval_reward``, the weighted reward of ``num_generations`` sampled
    completions per dev prompt.  Generation runs in the training process (transformers' ``generate``, KV cache)."""

    name = "grpo"
    config = GRPOTrainerConfig
    reference_model = True  # with beta > 0 (a frozen copy of the adapter as training starts, for a PEFT model)
    dev_metric = "eval_reward"
    higher_is_better = True
    learning_rates = {
        "adapter": (1e-5, LORA_WITHOUT_REGRET + ", whose RL runs found the same ratio as SFT's"),
        "full": (1e-6, "TRL's GRPOConfig default and DeepSeekMath's GRPO (Shao et al., 2024)"),
        "prompt": (3e-4, "no published rate: the adapter rate times SFT's prompt/adapter ratio (30)"),
    }
    layouts = (LAYOUT_PROMPT_COMPLETION,)

    def truncation_length(self, cfg):
        """None: GRPO does not truncate prompts (completions stop at ``max_completion_length``)."""
        return None

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """``trl.GRPOTrainer`` with :func:`reward_functions`; ``max_length`` is not GRPO's (prompts are not
        truncated).  The tokens it counts are the prompts' and the generated completions' (TRL's
        ``num_input_tokens_seen``)."""
        from trl import GRPOConfig, GRPOTrainer

        from sllmx.errors import SllmxError
        from sllmx.plugins import registry

        label_positions_head()
        fields = config_fields(cfg)
        names = list(fields.pop("rewards"))
        funcs, weights = reward_functions(names, fields.pop("reward_weights"))
        train, dev = _with_reference(train_dataset), _with_reference(eval_dataset)
        for name in names:  # the data's references, before any completion is generated
            reward = registry().get("reward", name)
            if "reference" in reward.reads:
                for split, ds in (("train", train), ("dev", dev)):
                    refs = list(ds["reference"]) if ds is not None and "reference" in ds.column_names else []
                    reason = reward.check(refs) if refs else f"the {split} split has no reference answers"
                    if reason:
                        raise SllmxError(f"trainer.rewards: {name} on the {split} split: {reason}")
        fields.pop("max_length", None)
        fields["reward_weights"] = weights

        class SllmxGRPOTrainer(GlobalBatchOrder, GRPOTrainer):
            def _track_num_input_tokens(self, inputs):
                pass  # GRPOTrainer counts the prompt and completion tokens it generates

        grpo_args = trl_config(GRPOConfig, fields, args)
        return keeping_reference_adapter(model, lambda: SllmxGRPOTrainer(
            model=model, reward_funcs=funcs, args=grpo_args, processing_class=tokenizer, train_dataset=train,
            eval_dataset=dev, callbacks=callbacks))


@hookimpl
def sllmx_trainers() -> list[Trainer]:
    """Register sft, cpt, dpo, orpo, kto, cpo, simpo and grpo."""
    return [SFT(), CPT(), DPO(), ORPO(), KTO(), CPO(), SimPO(), GRPO()]
