"""Built-in fine-tuning methods: lora, qlora, dora, prompt_tuning, prefix_tuning, full.

Each method owns how the base model is loaded (QLoRA loads it 4-bit) and how it
is wrapped (a PEFT config and ``peft.get_peft_model``).  Field names are PEFT's.
Heavy imports stay inside the functions: this module is imported at CLI start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import MethodConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import Method, Runtime


def _lora_kwargs(cfg: Any) -> dict[str, Any]:
    """The ``peft.LoraConfig`` keyword arguments shared by lora, dora and qlora."""
    target = cfg.target_modules
    if not isinstance(target, str):
        target = list(target)
    return dict(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        init_lora_weights=cfg.init_lora_weights,
    )


#: ``peft.LoraConfig.init_lora_weights`` values sllmx passes on.  eva, corda and loftq need data or a quantised
#: copy that a method option cannot give; pissa_niter_<n> (randomised SVD) would differ each time PEFT redoes it
#: when the adapter is loaded
INIT_LORA_WEIGHTS = (True, False, "gaussian", "pissa", "olora", "orthogonal")
#: the inits that move part of each base weight into the adapter (the base is changed in place)
RESIDUAL_INITS = ("pissa", "olora")


@dataclass
class LoraMethodConfig(MethodConfig):
    """Options of ``peft.LoraConfig`` (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models")."""

    name: str = "lora"
    r: int = option("rank of the update matrices", 16, ge=1)
    lora_alpha: int = option("scaling numerator: the update is scaled by lora_alpha / r", 32, gt=0)
    lora_dropout: float = option("dropout on the LoRA input (PEFT's default 0.0; 0.05 cost 21% of a CPU step, "
                                "where drawing the random masks is slow: benchmarks/RESULTS.md)", 0.0, ge=0, lt=1)
    target_modules: Any = option("module names to adapt, or 'all-linear' (every linear layer but the output head)",
                                "all-linear")
    bias: str = option("which biases train: none, all or lora_only (peft.LoraConfig)", "none",
                      choices=("none", "all", "lora_only"))
    use_rslora: bool = option("scale by lora_alpha / sqrt(r) instead of lora_alpha / r (rsLoRA: Kalajdzievski, "
                             "2023, \"A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA\")", False)
    init_lora_weights: Any = option(
        "peft.LoraConfig.init_lora_weights: true (A random, B zero: the update starts at 0), false (both random: "
        "for tests), gaussian, pissa (the principal singular vectors of each weight: Meng et al., 2024, "
        "\"PiSSA\"), olora (QR of each weight: Buyukakyuz, "
        "2024, \"OLoRA\"), orthogonal.  pissa and olora move the principal part of each base weight into the "
        "adapter; the saved adapter records it and PEFT redoes it (deterministically) when the adapter is loaded "
        "on the base; not with DPO or KTO (their reference model, the base with the adapter off, would be the "
        "residual) nor QLoRA", True)
    loraplus_lr_ratio: Optional[float] = option(
        "LoRA+ (Hayou et al., 2024, \"LoRA+: Efficient Low Rank Adaptation of Large Models\"): the B matrices "
        "learn this many times trainer.learning_rate (the paper suggests 16 and a learning rate about half "
        "plain LoRA's), through peft.optimizers.create_loraplus_optimizer; null: off", None, ge=1)

    def check(self, key: str) -> Optional[str]:
        """``init_lora_weights`` is one of :data:`INIT_LORA_WEIGHTS`; ``orthogonal`` needs an even ``r``."""
        init = self.init_lora_weights
        if init not in INIT_LORA_WEIGHTS or isinstance(init, (int, float)) and not isinstance(init, bool):
            shown = ", ".join(str(v).lower() for v in INIT_LORA_WEIGHTS)
            return f"{key}.init_lora_weights={init}: use one of {shown}"
        if init == "orthogonal" and self.r % 2:
            return f"{key}.init_lora_weights=orthogonal needs an even {key}.r (got {self.r})"
        return None


class LoRA(Method):
    """LoRA adapters on the base model's linear layers (peft.LoraConfig)."""

    name = "lora"
    config = LoraMethodConfig
    peft_type = "LORA"
    use_dora = False

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """``peft.get_peft_model`` with a ``LoraConfig`` of the method's options."""
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(**_lora_kwargs(cfg), use_dora=self.use_dora))

    def check(self, trainer: Any, cfg: Any) -> Optional[str]:
        """PiSSA / OLoRA change the base weights in place, so an objective whose reference model is the base with
        the adapter switched off (DPO, KTO: ``Trainer.reference_model``) would compare against the residual."""
        init = cfg.method.get("init_lora_weights")
        if init in RESIDUAL_INITS and getattr(trainer, "reference_model", False):
            return (f"method.init_lora_weights={init} moves part of each base weight into the adapter, so "
                    f"trainer={trainer.name}'s reference model (the base with the adapter off) would be the residual; "
                    f"use the default init, or a reference-free objective (orpo, cpo, simpo)")
        return None

    def optimizer(self, model: Any, cfg: Any, args: Any) -> Any:
        """With ``loraplus_lr_ratio``: ``peft.optimizers.create_loraplus_optimizer`` with the optimizer class
        and options ``args`` selects (``transformers.Trainer.get_optimizer_cls_and_kwargs``), the A matrices at
        ``args.learning_rate`` and the B matrices at that times the ratio (weight decay ``args.weight_decay``).
        None otherwise (the trainer's own AdamW)."""
        if cfg.loraplus_lr_ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if {"params", "model", "optimizer_dict"} & set(kwargs) or not isinstance(optimizer_cls, type):
            raise SllmxError(f"method.loraplus_lr_ratio needs an optimizer built from parameter groups (AdamW, "
                             f"Adam8bit, ...); trainer optim={args.optim} builds its own")
        kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
        return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate,
                                         loraplus_lr_ratio=float(cfg.loraplus_lr_ratio),
                                         loraplus_weight_decay=args.weight_decay, **kwargs)


@dataclass
class DoraMethodConfig(LoraMethodConfig):
    """LoRA options; the update is decomposed into magnitude and direction (Liu et al., 2024, "DoRA")."""

    name: str = "dora"


class DoRA(LoRA):
    """Weight-decomposed LoRA (peft.LoraConfig(use_dora=True))."""

    name = "dora"
    config = DoraMethodConfig
    use_dora = True


@dataclass
class QloraMethodConfig(LoraMethodConfig):
    """LoRA on a 4-bit NF4 base model (Dettmers et al., 2023, "QLoRA"); options of ``BitsAndBytesConfig``."""

    name: str = "qlora"
    bnb_4bit_quant_type: str = option("nf4 (normal float 4) or fp4", "nf4", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = option("quantise the quantisation constants too", True)
    bnb_4bit_compute_dtype: Optional[str] = option(
        "dtype of the matmuls: bfloat16, float16 or float32; null: bfloat16 where the GPU has it, else float32", None,
        choices=("bfloat16", "float16", "float32"))

    def check(self, key: str) -> Optional[str]:
        """LoRA's checks; the inits that decompose the base weights cannot read 4-bit ones."""
        if self.init_lora_weights in (*RESIDUAL_INITS, "orthogonal"):
            return (f"{key}.init_lora_weights={self.init_lora_weights} decomposes the base weights, which QLoRA "
                    f"holds in 4 bits; use it with method=lora")
        return super().check(key)


class QLoRA(LoRA):
    """LoRA on a bitsandbytes 4-bit NF4 base model with double quantisation (works on CPU too)."""

    name = "qlora"
    config = QloraMethodConfig

    def load_model(self, path: str, cfg: Any, runtime: Runtime, **kwargs: Any) -> Any:
        """Load the base model 4-bit (``BitsAndBytesConfig``); compute dtype bf16 on a GPU that has it, else fp32."""
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        if cfg.bnb_4bit_compute_dtype not in (None, "bfloat16", "float16", "float32"):
            raise SllmxError(f"method.bnb_4bit_compute_dtype={cfg.bnb_4bit_compute_dtype}: "
                             f"use bfloat16, float16, float32 or null")
        compute = getattr(torch, cfg.bnb_4bit_compute_dtype) if cfg.bnb_4bit_compute_dtype else runtime.compute_dtype
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=compute,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=compute, device_map=runtime.device, **kwargs)
        # bitsandbytes 0.50 repacks a CPU Linear4bit's weights into an inference-only layout the first time
        # it runs in eval mode without grad (a dev evaluation), and keeps that layout: later training
        # forwards then use gemv_4bit, which has no autograd kernel, so the gradient through the frozen
        # 4-bit weights to earlier layers is silently dropped.  Keep the trainable layout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """:func:`prepare_for_kbit_training`, then LoRA."""
        return super().wrap(prepare_for_kbit_training(model), cfg, runtime, tokenizer)

    def continue_adapter(self, model: Any, adapter_dir: str, cfg: Any, runtime: Runtime) -> Any:
        """:func:`prepare_for_kbit_training`, then the saved LoRA adapter, trainable."""
        return super().continue_adapter(prepare_for_kbit_training(model), adapter_dir, cfg, runtime)


def prepare_for_kbit_training(model: Any) -> Any:
    """A quantised base frozen for adapter training, its other weights (norms, embeddings, output head) in the dtype
    they were loaded in, except float16.

    PEFT's ``prepare_model_for_kbit_training`` (without gradient checkpointing, which is the trainer's decision)
    where any of those weights is float16, whose range norms can overflow: it freezes the model and upcasts them to
    float32.  Loaded in bfloat16 (the compute dtype of a bf16 run) or float32 they are only frozen, as TRL's own
    QLoRA preparation does (``trl.experimental.utils.prepare_peft_model``, TRL 1.x, which upcasts nothing): the
    residual stream then stays in the compute dtype, as in a LoRA run on the same base, instead of fp32 tensors
    cast to bf16 and back around every 4-bit layer (bitsandbytes returns its input's dtype), which measured 1.2x
    slower training steps on a CPU (benchmarks/RESULTS.md section 19).  The adapter's own weights are fp32 after
    ``wrap`` (PEFT's ``autocast_adapter_dtype``); TRL's trainers then cast a quantised model's adapter to bf16.

    Args:
        model: a ``transformers`` model loaded with a quantisation config; changed in place.

    Returns:
        ``model``.
    """
    import torch
    from peft import prepare_model_for_kbit_training

    if any(p.dtype == torch.float16 for p in model.parameters() if type(p).__name__ != "Params4bit"):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@dataclass
class PromptTuningMethodConfig(MethodConfig):
    """Options of ``peft.PromptTuningConfig`` (Lester et al., 2021, "The Power of Scale for Parameter-Efficient
    Prompt Tuning").  It needs a much higher learning rate than LoRA (e.g. 1e-2 to 3e-1)."""

    name: str = "prompt_tuning"
    num_virtual_tokens: int = option("number of trainable soft-prompt embeddings prepended to every input", 20, ge=1)
    prompt_tuning_init: str = option("RANDOM, TEXT (the embeddings of prompt_tuning_init_text) or SAMPLE_VOCAB "
                                    "(embeddings of random vocabulary tokens): peft.PromptTuningInit", "RANDOM",
                                    choices=("RANDOM", "TEXT", "SAMPLE_VOCAB"))
    prompt_tuning_init_text: Optional[str] = option("text whose token embeddings initialise the soft prompt (TEXT)",
                                                   None)

    def check(self, key: str) -> Optional[str]:
        """TEXT initialisation needs its text."""
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            return f"{key}.prompt_tuning_init=TEXT needs {key}.prompt_tuning_init_text (the text to start from)"
        return None


class PromptTuning(Method):
    """Soft prompt tuning: only the virtual-token embeddings train (peft.PromptTuningConfig)."""

    name = "prompt_tuning"
    config = PromptTuningMethodConfig
    family = "prompt"
    peft_type = "PROMPT_TUNING"

    def num_virtual_tokens(self, cfg: Any) -> int:
        """``method.num_virtual_tokens``: the soft prompt's length."""
        return int(cfg.num_virtual_tokens)

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """``peft.PromptTuningConfig``; TEXT initialisation tokenises the text with the run's tokenizer."""
        from peft import PromptTuningConfig, get_peft_model

        kwargs: dict[str, Any] = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      prompt_tuning_init=cfg.prompt_tuning_init)
        if cfg.prompt_tuning_init == "TEXT":
            # PEFT loads a tokenizer by name for the text; the run's own is the one the model is trained with
            kwargs.update(prompt_tuning_init_text=cfg.prompt_tuning_init_text,
                          tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None) or model.name_or_path)
            if tokenizer is not None:
                return self._wrap_from_text(model, PromptTuningConfig(**kwargs), tokenizer)
        return get_peft_model(model, PromptTuningConfig(**kwargs))

    @staticmethod
    def _wrap_from_text(model: Any, config: Any, tokenizer: Any) -> Any:
        """``get_peft_model`` with the soft prompt initialised from the embeddings of ``config``'s text as
        ``tokenizer`` tokenises it (repeated or cut to ``num_virtual_tokens``), PEFT's TEXT rule."""
        import torch
        from peft import get_peft_model

        text, n = config.prompt_tuning_init_text, config.num_virtual_tokens
        config.prompt_tuning_init = "RANDOM"  # PEFT would load a tokenizer by name; the run's is given
        peft_model = get_peft_model(model, config)
        ids = tokenizer(text)["input_ids"] or [tokenizer.eos_token_id]
        ids = (ids * (n // len(ids) + 1))[:n]
        embeddings = peft_model.get_input_embeddings()
        with torch.no_grad():
            words = embeddings(torch.tensor(ids, device=embeddings.weight.device)).detach().clone()
            peft_model.prompt_encoder["default"].embedding.weight.copy_(words.to(torch.float32))
        peft_model.peft_config["default"].prompt_tuning_init = "TEXT"
        return peft_model


@dataclass
class PrefixTuningMethodConfig(MethodConfig):
    """Options of ``peft.PrefixTuningConfig`` (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts
    for Generation"): trainable key/value vectors prepended at every layer.  Like prompt tuning, it needs a much
    higher learning rate than LoRA."""

    name: str = "prefix_tuning"
    num_virtual_tokens: int = option("length of the trainable prefix (key/value positions at every layer)", 20, ge=1)
    prefix_projection: bool = option("reparametrise the prefix through a two-layer MLP (the paper's, for stability; "
                                    "more parameters while training)", False)
    encoder_hidden_size: Optional[int] = option("hidden size of that MLP (null: the model's hidden size)", None,
                                               ge=1)


class PrefixTuning(Method):
    """Prefix tuning: trainable key/value prefixes at every layer (peft.PrefixTuningConfig)."""

    name = "prefix_tuning"
    config = PrefixTuningMethodConfig
    family = "prompt"
    peft_type = "PREFIX_TUNING"
    gradient_checkpointing = False  # checkpointed layers drop the attention cache that holds the prefix

    def check(self, trainer: Any, cfg: Any) -> Optional[str]:
        """Neither gradient checkpointing (the prefix lives in the attention cache, which checkpointed layers drop)
        nor packing (padding-free rows carry no attention mask for the prefix)."""
        if cfg.trainer.get("gradient_checkpointing"):
            return "method=prefix_tuning cannot train with trainer.gradient_checkpointing=true (set it to null or false)"
        if cfg.trainer.get("packing"):
            return "method=prefix_tuning cannot train with trainer.packing=true"
        return None
    # the prefix lives in the attention cache: the logits are as long as the input (num_virtual_tokens stays 0)

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """``peft.get_peft_model`` with a ``PrefixTuningConfig`` of the method's options."""
        from peft import PrefixTuningConfig, get_peft_model

        kwargs: dict[str, Any] = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      prefix_projection=cfg.prefix_projection)
        if cfg.encoder_hidden_size:
            kwargs["encoder_hidden_size"] = cfg.encoder_hidden_size
        return get_peft_model(model, PrefixTuningConfig(**kwargs))


@dataclass
class FullMethodConfig(MethodConfig):
    """Full fine-tuning: every parameter trains.  No options."""

    name: str = "full"


class Full(Method):
    """Full fine-tuning of every parameter."""

    name = "full"
    config = FullMethodConfig
    family = "full"

    def load_model(self, path: str, cfg: Any, runtime: Runtime, **kwargs: Any) -> Any:
        """The weights in float32 whatever ``trainer.precision``: with bf16 / fp16 they are the master
        weights of mixed precision (autocast computes in the low precision), as PyTorch's AMP prescribes;
        bf16 weights would take AdamW's small updates rounded, and fp16 ones cannot be unscaled."""
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=runtime.device, **kwargs)

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """The model itself: every parameter trains."""
        return model


@hookimpl
def sllmx_methods() -> list[Method]:
    """Register lora, qlora, dora, prompt_tuning, prefix_tuning and full."""
    return [LoRA(), QLoRA(), DoRA(), PromptTuning(), PrefixTuning(), Full()]
