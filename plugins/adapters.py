"""More PEFT adapters as built-in methods: ia3, adalora, loha, lokr, vera.

Each is ``peft.get_peft_model`` with PEFT's config class; the options are that class's fields under PEFT's
names.  ``target_modules`` null lets PEFT choose by architecture (``peft.utils.constants``), ``all-linear``
takes every linear layer but the output head.  AdaLoRA's rank schedule is wired to the trainer's steps by a
callback (:class:`AdaLoraSchedule`) that this module returns from the ``sllmx_callbacks`` hook.
Heavy imports stay inside the functions: this module is imported at CLI start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import MethodConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import Method, Runtime

__all__ = ["IA3", "AdaLoRA", "LoHa", "LoKr", "VeRA", "AdaLoraSchedule"]


def _targets(value: Any) -> Any:
    """``target_modules`` as PEFT takes it: None, a string (a regex or ``all-linear``) or a list of names."""
    return value if value is None or isinstance(value, str) else list(value)


class _Adapter(Method):
    """A method that is ``get_peft_model(model, <peft_class>(task_type="CAUSAL_LM", **options))``."""

    peft_class = ""
    #: sllmx's own option names, not the PEFT class's
    own_options: tuple[str, ...] = ("name",)

    def peft_kwargs(self, cfg: Any) -> dict[str, Any]:
        """The PEFT config's keyword arguments: every option but :attr:`own_options`."""
        from dataclasses import fields

        out = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in self.own_options}
        if "target_modules" in out:
            out["target_modules"] = _targets(out["target_modules"])
        return out

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """``peft.get_peft_model`` with the method's PEFT config."""
        import peft

        return peft.get_peft_model(model, getattr(peft, self.peft_class)(task_type="CAUSAL_LM",
                                                                          **self.peft_kwargs(cfg)))


# ----------------------------------------------------------------------------- (IA)3


@dataclass
class IA3MethodConfig(MethodConfig):
    """Options of ``peft.IA3Config`` (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
    Cheaper than In-Context Learning"): learned vectors that rescale keys, values and feed-forward activations."""

    name: str = "ia3"
    target_modules: Any = option("modules to rescale (null: PEFT's choice for the architecture, e.g. k_proj, v_proj, "
                                "down_proj for Llama)", None)
    feedforward_modules: Any = option("those of target_modules whose input (not output) is rescaled (null: PEFT's "
                                     "choice, e.g. down_proj)", None)


class IA3(_Adapter):
    """(IA)3: learned rescaling vectors on attention and feed-forward activations (peft.IA3Config)."""

    name = "ia3"
    config = IA3MethodConfig
    peft_class = "IA3Config"
    peft_type = "IA3"
    learning_rate_scale = (3.0, "(IA)3 trained at 3e-3 in its paper (Liu et al., 2022), 3x LoRA's 1e-3 here")


# ----------------------------------------------------------------------------- AdaLoRA


@dataclass
class AdaLoraMethodConfig(MethodConfig):
    """Options of ``peft.AdaLoraConfig`` (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient
    Fine-Tuning"): LoRA in SVD form whose ranks are pruned from ``init_r`` to an average ``target_r`` by
    importance.  ``total_step`` is not an option: sllmx sets it to the trainer's number of optimizer steps."""

    name: str = "adalora"
    init_r: int = option("rank of every update matrix at the start", 12, ge=1)
    target_r: int = option("average rank left after the budget is allocated", 8, ge=1)
    tinit: int = option("optimizer steps at init_r before ranks are pruned", 0, ge=0)
    tfinal: int = option("optimizer steps at the end with the final ranks fixed", 0, ge=0)
    deltaT: int = option("optimizer steps between two budget allocations", 1, ge=1)
    beta1: float = option("EMA coefficient of the importance (sensitivity) scores", 0.85, gt=0, lt=1)
    beta2: float = option("EMA coefficient of their uncertainty", 0.85, gt=0, lt=1)
    orth_reg_weight: float = option("weight of the orthogonality regulariser on P and Q, added to the model's "
                                   "loss when it is given labels (SFT: sllmx then uses the model's own loss)", 0.5,
                                   ge=0)
    lora_alpha: int = option("scaling numerator", 32, gt=0)
    lora_dropout: float = option("dropout on the adapter input", 0.0, ge=0, lt=1)
    target_modules: Any = option("module names to adapt, or 'all-linear'", "all-linear")

    def check(self, key: str) -> Optional[str]:
        """The target rank is at most the initial one."""
        if self.target_r > self.init_r:
            return f"{key}.target_r={self.target_r} is above {key}.init_r={self.init_r}: ranks are only pruned"
        return None


class AdaLoRA(_Adapter):
    """AdaLoRA: LoRA whose ranks are allocated by importance during training (peft.AdaLoraConfig)."""

    name = "adalora"
    config = AdaLoraMethodConfig
    peft_class = "AdaLoraConfig"
    peft_type = "ADALORA"

    def check(self, trainer: Any, cfg: Any) -> Optional[str]:
        """With ``trainer.max_steps`` set, ``tinit + tfinal`` leave steps to allocate ranks in; and no objective
        with a reference model (DPO, KTO, GRPO with ``beta > 0``: ``Trainer.reference_model``): TRL keeps the
        reference as a second adapter ``"ref"`` beside the trained one, which PEFT refuses for AdaLoRA ("AdaLoraModel supports only 1
        trainable adapter")."""
        # DPO and KTO: beta > 0 always; GRPO keeps no reference at beta 0 (its default)
        if getattr(trainer, "reference_model", False) and float(cfg.trainer.get("beta", 1.0) or 0.0) > 0:
            return (f"method=adalora with trainer={trainer.name}: TRL keeps the reference model as a second adapter, "
                    f"and PEFT's AdaLoRA allows only one; use a reference-free objective (orpo, cpo, simpo) or "
                    f"another method (lora)")
        steps, m = int(cfg.trainer.get("max_steps") or -1), cfg.method
        if steps > 0 and m.tinit + m.tfinal >= steps:
            return (f"method.tinit={m.tinit} + method.tfinal={m.tfinal} leave no step to allocate ranks in "
                    f"trainer.max_steps={steps}; lower them")
        return None

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """``get_peft_model`` with an ``AdaLoraConfig`` whose ``total_step`` is a placeholder until the trainer
        knows its steps (:class:`AdaLoraSchedule` sets it at the start of training)."""
        import peft

        kwargs = self.peft_kwargs(cfg)
        placeholder = kwargs["tinit"] + kwargs["tfinal"] + 1  # PEFT checks it; the real value comes at train begin
        return peft.get_peft_model(model, peft.AdaLoraConfig(task_type="CAUSAL_LM", total_step=placeholder,
                                                             **kwargs))


class AdaLoraSchedule:
    """A ``transformers.TrainerCallback`` that drives AdaLoRA's rank allocation from the trainer: at the start
    of training it sets the config's ``total_step`` to ``state.max_steps`` (and refuses a schedule with no
    budgeting phase: ``tinit + tfinal`` must be below it); after each optimizer step, before the gradients are
    zeroed, it calls ``model.base_model.update_and_allocate(global_step)`` as PEFT's AdaLoRA guide prescribes.

    Checkpoints and the saved model keep every rank (the pruned ones are zeros): PEFT would otherwise save them
    cut to the rank pattern of the moment, which a checkpoint from an earlier step (the best one, loaded at the
    end) or a resumed run's fresh model cannot load.  So the pattern is set aside after each step (saves come
    after ``on_step_end``) and put back before the next allocation.  A resumed run restarts the importance
    scores.  (A class built on first use: transformers is imported lazily.)"""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from transformers import TrainerCallback

        class _Schedule(TrainerCallback):
            pattern = None

            def on_train_begin(self, args, state, control, model=None, **kw):
                config = model.peft_config[model.active_adapter]
                if config.tinit + config.tfinal >= state.max_steps:
                    raise SllmxError(f"method.tinit={config.tinit} + method.tfinal={config.tfinal} leave no step to "
                                     f"allocate ranks in a run of {state.max_steps} optimizer steps; lower them")
                config.total_step = state.max_steps
                model.base_model.rankallocator.set_total_step(state.max_steps)

            def on_optimizer_step(self, args, state, control, model=None, **kw):
                config = model.peft_config[model.active_adapter]
                if self.pattern is not None:
                    config.rank_pattern = self.pattern
                model.base_model.update_and_allocate(state.global_step)

            def on_step_end(self, args, state, control, model=None, **kw):
                config = model.peft_config[model.active_adapter]
                self.pattern, config.rank_pattern = config.rank_pattern, None

        return _Schedule()


# ----------------------------------------------------------------------------- LyCORIS: LoHa, LoKr


@dataclass
class _LycorisMethodConfig(MethodConfig):
    """The options LoHa and LoKr share (``peft.tuners.lycoris_utils.LycorisConfig``'s subclasses)."""

    r: int = option("rank of the low-rank factors", 8, ge=1)
    alpha: int = option("scaling numerator: the update is scaled by alpha / r", 8, gt=0)
    rank_dropout: float = option("dropout on each rank during training", 0.0, ge=0, lt=1)
    module_dropout: float = option("probability of switching a whole adapted module off for a step", 0.0, ge=0, lt=1)
    target_modules: Any = option("module names to adapt, or 'all-linear'", "all-linear")


@dataclass
class LoHaMethodConfig(_LycorisMethodConfig):
    """Options of ``peft.LoHaConfig`` (Hyeon-Woo et al., 2022, "FedPara"; LyCORIS): the update is the Hadamard
    product of two low-rank products, rank up to r squared for the parameters of rank 2r."""

    name: str = "loha"


class LoHa(_Adapter):
    """LoHa: low-rank Hadamard product updates (peft.LoHaConfig)."""

    name = "loha"
    config = LoHaMethodConfig
    peft_class = "LoHaConfig"
    peft_type = "LOHA"


@dataclass
class LoKrMethodConfig(_LycorisMethodConfig):
    """Options of ``peft.LoKrConfig`` (Edalati et al., 2022, "KronA"; LyCORIS): the update is a Kronecker
    product of a small matrix and a low-rank one."""

    name: str = "lokr"
    decompose_both: bool = option("factor the left Kronecker matrix into low rank too", False)
    decompose_factor: int = option("Kronecker factorisation factor (-1: as square as the shape allows)", -1, ge=-1)


class LoKr(_Adapter):
    """LoKr: low-rank Kronecker product updates (peft.LoKrConfig)."""

    name = "lokr"
    config = LoKrMethodConfig
    peft_class = "LoKrConfig"
    peft_type = "LOKR"


# ----------------------------------------------------------------------------- VeRA


@dataclass
class VeraMethodConfig(MethodConfig):
    """Options of ``peft.VeraConfig`` (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation"):
    one pair of frozen random low-rank matrices shared by every layer, and per-layer trainable scaling
    vectors; far fewer parameters than LoRA, at a higher rank."""

    name: str = "vera"
    r: int = option("rank of the shared random matrices (VeRA uses far higher ranks than LoRA)", 256, ge=1)
    target_modules: Any = option("module names to adapt (null: PEFT's choice, e.g. q_proj, v_proj for Llama)", None)
    projection_prng_key: int = option("seed of the shared random matrices", 0, ge=0)
    save_projection: bool = option("store the random matrices in the saved adapter (else they are re-drawn from "
                                  "projection_prng_key on load)", True)
    vera_dropout: float = option("dropout on the adapter input", 0.0, ge=0, lt=1)
    d_initial: float = option("initial value of the d scaling vector", 0.1, gt=0)


class VeRA(_Adapter):
    """VeRA: shared frozen random matrices with trainable per-layer scaling vectors (peft.VeraConfig)."""

    name = "vera"
    config = VeraMethodConfig
    peft_class = "VeraConfig"
    peft_type = "VERA"
    learning_rate_scale = (10.0, "VeRA's instruction-tuning runs trained at about 10x LoRA's rate (Kopiczko et al., "
                                 "2024)")


@hookimpl
def sllmx_methods() -> list[Method]:
    """Register ia3, adalora, loha, lokr and vera."""
    return [IA3(), AdaLoRA(), LoHa(), LoKr(), VeRA()]


@hookimpl
def sllmx_callbacks(run: Any) -> list[Any]:
    """AdaLoRA's rank schedule (:class:`AdaLoraSchedule`) when the run's method is ``adalora``."""
    return [AdaLoraSchedule()] if isinstance(run.method, AdaLoRA) else []
