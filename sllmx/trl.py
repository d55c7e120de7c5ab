"""TRL glue for trainer plugins, built-in and third-party alike: a :class:`~sllmx.interfaces.Trainer` whose work
is one TRL trainer class and its config class (:class:`TRLObjective`), and :func:`trl_config`, which merges the
run-level arguments sllmx decides with the objective's options into TRL's config.

TRL is imported only when a trainer is built (this module is imported at start-up with the plugins)::

    from sllmx.trl import TRLObjective

    class MyDPO(TRLObjective):
        name = "my_dpo"
        config = MyDPOConfig            # a sllmx.config.TrainerConfig subclass, TRL's field names
        layouts = (LAYOUT_PREFERENCE,)

        def trl_classes(self):
            from trl import DPOConfig, DPOTrainer
            return DPOTrainer, DPOConfig
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

from sllmx.errors import SllmxError
from sllmx.interfaces import Trainer

__all__ = ["GlobalBatchOrder", "TRLObjective", "keeping_reference_adapter", "label_positions_head", "trl_config"]


def config_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a trainer's config as a plain dict: its dataclass instance (what the core hands a plugin,
    :func:`sllmx.plugins.typed`), an OmegaConf node (resolved) or a mapping."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def trl_config(config_cls: type, cfg: Any, args: dict[str, Any]) -> Any:
    """Build TRL's config: run-level ``args``, then this objective's fields, then ``cfg.args``.

    Fields of the sllmx config other than ``name``, ``args`` and ``precision`` (decided by the
    runner, in ``args`` as ``bf16`` / ``fp16``) pass through under their own (TRL) names.
    ``warmup_ratio`` is the one exception: transformers 5 folded it into ``warmup_steps`` (a float
    in [0, 1) is a ratio), so it is passed as that where the installed version has no ``warmup_ratio``.

    Raises:
        SllmxError: naming the option when TRL rejects it (unknown name or bad value).
    """
    fields = config_fields(cfg)
    extra = fields.pop("args", {}) or {}
    name = fields.pop("name", None)
    fields.pop("precision", None)  # sllmx's run-level decision, passed in ``args`` as bf16 / fp16
    known = {f.name for f in dataclasses.fields(config_cls)}
    if "warmup_ratio" not in known:
        ratio = fields.pop("warmup_ratio", 0.0)
        if not 0.0 <= ratio < 1.0:
            raise SllmxError(f"trainer.warmup_ratio={ratio}: must be in [0, 1)")
        fields.setdefault("warmup_steps", ratio)
    unknown = sorted(set(extra) - known)
    if unknown:
        raise SllmxError(f"trainer.args: {config_cls.__name__} has no option {unknown[0]!r}")
    kwargs = {**args, **{k: v for k, v in fields.items() if v is not None or k not in args}, **extra}
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SllmxError(f"trainer={name}: {config_cls.__name__} rejected the options: {exc}") from exc


def label_positions_head() -> bool:
    """Make TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``: DPO, KTO, GRPO and SFT's token metrics)
    project only the positions that have a label on a CPU too.

    TRL scores only the labelled positions (the completion tokens) on Triton devices (CUDA, XPU) and every position
    elsewhere, so that compilers with static shapes (Neuron) do not recompile for each batch; on a CPU, in eager
    PyTorch, that means the ``(positions, vocabulary)`` projection, log-softmax and entropy of every prompt token too,
    only to be masked out.  The returned log-probabilities are the same (each labelled position's value is computed
    by the same chunked kernel; the sums may differ in the last bits).  Idempotent.

    Returns:
        True when TRL has the switch this sets (``trl.trainer.utils._use_triton``, TRL 1.x), else False (nothing
        changed).
    """
    try:
        import trl.kernels.chunked_logprob as trl_kernels
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    # the kernel (Triton or PyTorch tiles) is chosen by trl.kernels' own name; only then is this name just the
    # compact-or-every-position decision of add_fused_lm_head
    if decide is None or getattr(trl_kernels, "_use_triton", None) is None:
        return False
    if getattr(decide, "sllmx_cpu", False):
        return True

    def compact_on_cpu(device):
        return device.type == "cpu" or decide(device)

    compact_on_cpu.sllmx_cpu = True
    trl_utils._use_triton = compact_on_cpu
    return True


#: the adapter TRL's DPO, KTO and GRPO trainers add to a PEFT model as its frozen reference
REFERENCE_ADAPTER = "ref"


def keeping_reference_adapter(model: Any, build: Any) -> Any:
    """``build()`` (a TRL trainer's constructor) on ``model``, keeping the reference adapter an earlier trainer left.

    Given a PEFT model, TRL's DPO, KTO and GRPO trainers add an adapter ``"ref"``, a frozen copy of the
    ``"default"`` adapter as it is then, and use it as the reference model.  A second trainer on the same model
    (the test split's evaluation after training) would fail (PEFT: the adapter exists), and a fresh copy would make
    the trained adapter its own reference (rewards and margins 0).  So an existing ``"ref"`` is set aside, TRL adds
    its own, and the first one's weights are copied back into it: the reference stays the model training started
    from.

    Returns:
        What ``build()`` returns.
    """
    config = getattr(model, "peft_config", None)
    if not isinstance(config, dict) or REFERENCE_ADAPTER not in config:
        return build()
    import re

    # "...lora_A.ref.weight", and parameters held directly in a ParameterDict ("...ia3_l.ref")
    marker = re.compile(rf"\.{REFERENCE_ADAPTER}(\.|$)")
    kept = {name: p.detach().clone() for name, p in model.named_parameters() if marker.search(name)}
    model.delete_adapter(REFERENCE_ADAPTER)
    try:
        return build()
    finally:  # also when the build fails: the model keeps its reference
        if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
            model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
        for name, param in model.named_parameters():
            if name in kept:
                param.data.copy_(kept[name])


class GlobalBatchOrder:
    """A mixin for a ``transformers.Trainer`` subclass: the same training order for any number of processes.

    ``train_sampling_strategy=group_by_length`` groups examples of similar length into batches of
    the per-process batch size (``LengthGroupedSampler``), so 2 processes x 4 examples see other
    batches than 1 process x 8.  Here the groups are as large as one optimizer step of every rank
    (per-device batch x gradient accumulation x world size) and their order is drawn by a
    generator seeded with ``data_seed`` (else ``seed``) plus the epoch; accelerate then deals each step's examples
    out to the ranks, so every optimizer step averages the gradients of the same examples as one
    process with the whole batch would.
    """

    def _get_train_sampler(self, train_dataset=None):
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            args = self.args
            sampler.batch_size = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            seed = args.data_seed if args.data_seed is not None else args.seed
            sampler.generator = torch.Generator().manual_seed(seed)
            # epoch e draws its order from seed + e (the trainer calls set_epoch at each epoch), so a run
            # resumed in a later epoch sees the order the uninterrupted run saw
            sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(seed + epoch)
        return sampler


class TRLObjective(Trainer):
    """A :class:`~sllmx.interfaces.Trainer` whose work is one TRL trainer class and its config class."""

    #: fields of the objective's config that are sllmx's own, not the TRL config's (left out of it by :meth:`build`)
    own_options: tuple[str, ...] = ()

    def trl_classes(self) -> tuple[type, type]:
        """``(TRL trainer class, TRL config class)``, imported when a run needs them."""
        raise NotImplementedError

    def build(self, model, tokenizer, train_dataset, eval_dataset, cfg, args, callbacks, virtual_tokens=0):
        """``TrainerClass(model, args=ConfigClass(...), processing_class=tokenizer, ...)`` with the
        :class:`GlobalBatchOrder` training order; see :func:`trl_config`.  ``virtual_tokens`` (prompt
        learning, :meth:`~sllmx.interfaces.Method.num_virtual_tokens`) is the subclass's to use."""
        trainer_cls, config_cls = self.trl_classes()
        label_positions_head()
        trainer_cls = type(trainer_cls.__name__, (GlobalBatchOrder, trainer_cls), {})
        fields = config_fields(cfg)
        for key in self.own_options:
            fields.pop(key, None)
        trl_args = trl_config(config_cls, fields, args)
        return keeping_reference_adapter(model, lambda: trainer_cls(
            model=model, args=trl_args, processing_class=tokenizer, train_dataset=train_dataset,
            eval_dataset=eval_dataset, callbacks=callbacks))
