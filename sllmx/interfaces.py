"""The objects plugins hand to sllmx through the hooks in :mod:`sllmx.hookspecs`.

Each kind of extension is a small base class with a ``name`` (the value a user
writes on the command line, e.g. ``method=qlora``) and, where the user can
configure it, a ``config`` dataclass.  sllmx stores that dataclass in Hydra's
ConfigStore under the kind's group (``method``, ``trainer``, ``model``,
``data``, ``logger``), so ``method=<name>`` works for a plugin that ships no YAML.
The guide for plugin authors is docs/plugins.md.  Every plugin kind's base class is kept in this one
module (~370 lines, most of it docstrings), so that a plugin author reads the whole contract in one file.

Nothing here imports torch, transformers, peft or trl: plugin modules are
imported at start-up (``python -m sllmx --help`` must stay fast), so heavy
imports belong inside the methods below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from sllmx.runtime import Runtime  # noqa: F401  (part of the plugin interface: Method.load_model / wrap receive it)

#: Example layouts a trainer can consume, named by their TRL dataset columns.
#: See https://huggingface.co/docs/trl/dataset_formats
LAYOUT_MESSAGES = ("messages",)
LAYOUT_PROMPT_COMPLETION = ("prompt", "completion")
LAYOUT_TEXT = ("text",)
LAYOUT_PREFERENCE = ("prompt", "chosen", "rejected")
LAYOUT_UNPAIRED = ("prompt", "completion", "label")


class Plugin:
    """Base of every named extension: a ``name`` and an optional ``config`` dataclass.

    Attributes:
        name: what users type (``method=<name>``); unique within its kind.
        config: a dataclass whose fields are the options, each with
            ``metadata={"help": ...}``; stored in Hydra's ConfigStore.  ``None``
            for kinds that take no options.
        kind: the config group / registry this plugin belongs to (set by subclasses).
        help: one line shown by ``python -m sllmx.plugins``; defaults to the class docstring's first line.
    """

    kind: ClassVar[str] = "plugin"
    name: str = ""
    config: type | None = None

    @property
    def help(self) -> str:
        """The first line of the class docstring."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


class Method(Plugin):
    """A fine-tuning method: how the base model is loaded and how it is wrapped.

    Subclasses implement :meth:`load_model` (e.g. QLoRA loads 4-bit weights) and
    :meth:`wrap` (e.g. build a ``peft.LoraConfig`` and call ``get_peft_model``).
    """

    kind = "method"
    #: what trains, which picks this method's default ``trainer.learning_rate`` from the trainer's table
    #: (:attr:`Trainer.learning_rates`; :mod:`sllmx.defaults`): ``adapter`` (LoRA and the other weight
    #: adapters), ``prompt`` (soft prompts and prefixes), ``full`` (every weight)
    family: str = "adapter"
    #: ``(factor, source)``: the default learning rate is the family's times ``factor`` (e.g. a method whose
    #: paper trains at several times LoRA's rate); the source is shown with it
    learning_rate_scale: tuple[float, str] = (1.0, "")
    #: the ``peft_type`` of the adapter :meth:`wrap` adds (``LORA``, ``PROMPT_TUNING``, ...; None: no adapter),
    #: which a saved adapter must have to be trained further (:meth:`continue_adapter`)
    peft_type: str | None = None
    #: False for a method that cannot train under gradient checkpointing (prefix tuning: its prefix lives in the
    #: attention cache, which checkpointed layers drop); the memory estimate then never turns it on
    gradient_checkpointing: bool = True
    #: False for an evaluation-only baseline (``zero_shot``, ``few_shot``, ``rag``): the runner loads the base
    #: model with :meth:`load_model`, trains nothing, scores dev (and test) once and records ``baseline: true``
    trains: bool = True

    def prompting(self, cfg: Any, train: Any, seed: int) -> Any:
        """How this method builds the dev/test prompts: a :class:`sllmx.prompting.Prompting` (e.g.
        :func:`sllmx.prompting.few_shot` over ``train``, the train split), or None (default) to keep the data's
        prompts.  Called before any model is loaded, so a bad option fails first; ``seed`` is the run's."""
        return None

    def check(self, trainer: "Trainer", cfg: Any) -> str | None:
        """Return a reason why this method cannot work with ``trainer`` (checked before any
        model is loaded), or ``None`` when the pair works.  Default: every pair works."""
        return None

    def load_model(self, path: str, cfg: Any, runtime: Runtime, **kwargs: Any) -> Any:
        """Load the base model from ``path`` (a local Hugging Face directory or hub id).

        ``kwargs`` are the model source's ``from_pretrained`` options (e.g. ``trust_remote_code``).
        Default: ``AutoModelForCausalLM.from_pretrained(path, dtype=runtime.compute_dtype, **kwargs)``
        on ``runtime.device`` (this process's device: ``cuda:<local rank>`` under a multi-GPU launch).
        """
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=runtime.compute_dtype, device_map=runtime.device,
                                                    **kwargs)

    def wrap(self, model: Any, cfg: Any, runtime: Runtime, tokenizer: Any = None) -> Any:
        """Return the model to train (a ``peft.PeftModel`` or the model itself).

        ``tokenizer`` is the run's tokenizer (the processing class the trainer gets), e.g. to
        initialise a soft prompt from text; sllmx always passes it (by keyword).
        """
        raise NotImplementedError

    def continue_adapter(self, model: Any, adapter_dir: str, cfg: Any, runtime: Runtime) -> Any:
        """The model to train when the run trains a saved PEFT adapter further (``model=run
        model.adapter=continue``) instead of :meth:`wrap`: ``peft.PeftModel.from_pretrained(model, adapter_dir,
        is_trainable=True)`` on the base ``model`` from :meth:`load_model`.  The adapter's saved options apply,
        not ``cfg``'s.

        Raises:
            SllmxError: the adapter is not of :attr:`peft_type`.
        """
        import json
        import os

        from peft import PeftModel

        from sllmx.errors import SllmxError

        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
            saved = json.load(f).get("peft_type")
        if self.peft_type is None or saved != self.peft_type:
            raise SllmxError(f"model.adapter=continue: {adapter_dir} holds a {saved} adapter; method={self.name} "
                             f"trains {self.peft_type or 'no PEFT adapter'}: choose the method that made it, or "
                             f"model.adapter=merge")
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)

    def optimizer(self, model: Any, cfg: Any, args: Any) -> Any:
        """The optimizer for ``model`` (the wrapped model) under ``args`` (the built trainer's
        ``TrainingArguments``: ``learning_rate``, ``weight_decay``, ``optim``), or None (default) for the
        trainer's own (transformers' ``Trainer.create_optimizer``).  E.g. LoRA+ gives the B matrices a higher
        learning rate (``peft.optimizers.create_loraplus_optimizer``).  The scheduler is the trainer's."""
        return None

    def num_virtual_tokens(self, cfg: Any) -> int:
        """How many virtual tokens the wrapped model prepends to every input (prompt learning: its
        logits and hidden states are that much longer than ``input_ids``); the trainers ask this
        (:meth:`Trainer.build` gets it as ``virtual_tokens``).  Default: 0."""
        return 0


class Trainer(Plugin):
    """A training objective on TRL: which data layout it needs and how its trainer is built.

    Attributes:
        layouts: the example layouts (tuples of column names, see ``LAYOUT_*``) it accepts,
            preferred first.
        dev_metric: the metric (name as the HF Trainer logs it, e.g. ``eval_loss``) used for
            model selection, early stopping and pruning unless ``eval.metric`` overrides it.
        higher_is_better: the direction of ``dev_metric``.
        loss_is_token_nll: ``eval_loss`` is the mean token negative log-likelihood, so the metrics
            that need ``"loss"`` can be computed from it.
        loss_metrics: the metrics needing ``"loss"`` computed at every evaluation of such a trainer (besides
            one named by ``data.metric`` or ``eval.metric``); default ``("perplexity",)``.
    """

    kind = "trainer"
    layouts: Sequence[tuple[str, ...]] = ()
    dev_metric: str = "eval_loss"
    higher_is_better: bool = False
    #: True where ``eval_loss`` is the mean negative log-likelihood per token (SFT), so that the metrics
    #: computed from the loss (``needs = "loss"``: exp(eval_loss), logged as ``eval_perplexity``) apply
    loss_is_token_nll: bool = False
    loss_metrics: Sequence[str] = ("perplexity",)
    #: the default ``learning_rate`` per method family (:attr:`Method.family`): ``{family: (rate, source)}``,
    #: the source a paper, recipe or measurement (:mod:`sllmx.defaults`; docs/defaults.md); a family missing
    #: here takes the trainer config's own fallback
    learning_rates: dict[str, tuple[float, str]] = {}
    #: True where the objective compares the policy with a reference model that, for a PEFT model, is the base
    #: with the adapter switched off (DPO, KTO), so a method that changes the base weights cannot be used
    reference_model: bool = False

    def truncation_length(self, cfg: Any) -> int | None:
        """Tokens beyond which a train or dev example is cut (the data-length check warns about them): this
        trainer config's ``max_length`` by default; None when nothing is cut (examples split over packed rows).

        Args:
            cfg: this trainer's config (an OmegaConf node shaped like ``config``).
        """
        return cfg.get("max_length")

    def build(
        self,
        model: Any,
        tokenizer: Any,
        train_dataset: Any,
        eval_dataset: Any,
        cfg: Any,
        args: dict[str, Any],
        callbacks: list[Any],
        virtual_tokens: int = 0,
    ) -> Any:
        """Return a ``transformers.Trainer`` subclass instance ready for ``.train()``.

        Args:
            model: the wrapped model from :meth:`Method.wrap`.
            tokenizer: the processing class (tokenizer with a chat template).
            train_dataset, eval_dataset: ``datasets.Dataset`` in one of ``layouts``.
            cfg: this trainer's config (an OmegaConf node shaped like ``config``).
            args: keyword arguments sllmx decided for the TRL config (output_dir, seed,
                eval/save strategy, precision, device, report_to, ...); the trainer
                merges them with its own fields.
            callbacks: ``transformers.TrainerCallback`` objects to pass to the trainer.
            virtual_tokens: :meth:`Method.num_virtual_tokens` of the run's method; passed (by
                keyword) only when it is not 0, so a trainer that cannot serve prompt learning may
                leave the argument out.
        """
        raise NotImplementedError


class ModelSource(Plugin):
    """Where a base model comes from: turns a ``model=`` config into a loadable path."""

    kind = "model"

    def check(self, cfg: Any) -> str | None:
        """A reason why this config cannot work (a bad option, a missing file or package), found
        without loading or writing anything; checked before run.json is written.  Default: None."""
        return None

    def resolve(self, cfg: Any, cache_dir: str) -> str:
        """Return a local Hugging Face model directory (or hub id) holding weights and a
        tokenizer with a chat template.  May build it once and cache it under ``cache_dir``
        (GGUF → HF conversion, the tiny test model); the cache is written atomically."""
        raise NotImplementedError

    def from_pretrained_kwargs(self, cfg: Any) -> dict[str, Any]:
        """Options for ``from_pretrained`` of the model and tokenizer at the resolved path
        (e.g. ``{"trust_remote_code": False}``).  Default: none."""
        return {}

    def adapter(self, cfg: Any) -> str | None:
        """A saved PEFT adapter folder that the run trains further on the resolved base (``Method.continue_adapter``)
        instead of wrapping it anew; None (default) for a plain base model."""
        return None

    def lineage(self, cfg: Any) -> dict[str, Any]:
        """Where this model comes from when it is itself a product of sllmx (a finished run: its folder, method,
        trainer, and its own lineage), recorded in run.json ``model_facts.lineage``; ``{}`` (default) otherwise."""
        return {}

    def facts(self, path: str) -> dict[str, Any]:
        """What the source knows of the model at the resolved ``path`` that the config does not say
        (a conversion's input file, the pad token and chat template it chose, ...); recorded in
        run.json ``model_facts``.  Default: none."""
        return {}


class DataSource(Plugin):
    """Where examples come from (files, a hub dataset, a generator).

    :meth:`load` returns raw rows per split; sllmx then converts them with a
    :class:`DataFormat` into the layout the trainer needs.
    """

    kind = "data"

    def load(self, cfg: Any) -> "RawSplits":  # noqa: F821
        """Return the raw rows of each split found (``train`` required; ``dev``/``test`` optional)."""
        raise NotImplementedError


@dataclass
class RawSplit:
    """Rows read from one place, kept with where they came from for error messages.

    Attributes:
        rows: one dict per example, as read (before column mapping).
        origin: the file path or dataset id.
        line_of: ``line_of(i)`` gives a human position for row ``i`` (``"line 12"``, ``"row 7"``).
        columns: the column mapping ``{canonical: source}`` given in the data config.
    """

    rows: list[dict[str, Any]]
    origin: str
    line_of: Callable[[int], str] = lambda i: f"row {i + 1}"
    columns: dict[str, str] = field(default_factory=dict)


RawSplits = dict  # {"train": RawSplit, "dev": RawSplit | None, "test": RawSplit | None}


class FieldError(ValueError):
    """A row's field is missing, empty or of the wrong type.  Raised by :meth:`DataFormat.convert`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class DataFormat(Plugin):
    """A row shape users have (chat ``messages``, Alpaca, ShareGPT pairs, ...).

    Attributes:
        columns: the columns a row must have for this format (after column mapping);
            used to detect the format when ``data.format=auto`` (the format with the
            most matching columns wins).
        layouts: the ``LAYOUT_*`` tuples that :meth:`convert` can produce, preferred first.
            E.g. preference pairs give ``LAYOUT_PREFERENCE``, and also ``LAYOUT_UNPAIRED``
            (two rows per pair, TRL's ``unpair_preference_dataset``) and
            ``LAYOUT_PROMPT_COMPLETION`` (the chosen answer) for SFT.
    """

    kind = "format"
    columns: tuple[str, ...] = ()
    layouts: tuple[tuple[str, ...], ...] = ()

    def convert(self, row: dict[str, Any], layout: tuple[str, ...], system: str | None = None) -> list[dict[str, Any]]:
        """Convert one row into zero or more examples of ``layout`` (TRL's conversational form,
        i.e. lists of ``{"role", "content"}`` messages, where it applies).

        Args:
            row: one input row, with columns already renamed by ``data.columns``.
            layout: one of ``self.layouts``.
            system: an optional system prompt to put first in every prompt.

        Raises:
            FieldError: naming the offending field when the row cannot be converted.
        """
        raise NotImplementedError


#: what a metric is computed from (``Metric.needs``); the inputs sllmx itself computes
NEEDS_GENERATIONS = "generations"
NEEDS_PAIR_LOGPROBS = "pair_logprobs"
NEEDS_LOSS = "loss"
#: every ``needs`` sllmx computes; any other value is the metric's own (:meth:`Metric.inputs`)
BUILTIN_NEEDS = (NEEDS_GENERATIONS, NEEDS_PAIR_LOGPROBS, NEEDS_LOSS)


@dataclass
class MetricInputs:
    """What a metric is computed from, as :meth:`Metric.inputs` returns it.

    Attributes:
        args: the positional arguments of :meth:`Metric.compute` (e.g. ``(predictions, references)``).
        rows: one JSON-serialisable dict per scored example, written to ``generations.jsonl`` (may be empty).
    """

    args: tuple
    rows: list[dict[str, Any]] = field(default_factory=list)


class Metric(Plugin):
    """A dev/test metric, computed at each evaluation of the dev split (and once on test).

    Attributes:
        higher_is_better: the direction of every value it returns; sweeps, early stopping
            and tables use it (lm-evaluation-harness registers metrics the same way).
        keys: the names :meth:`compute` returns (default: just ``name``); any of them can be
            the dev metric (``eval.metric=<key>``).  They reach hooks, loggers and run.json as
            ``eval_<key>`` (``test_<key>`` on the test split).
        needs: what :meth:`compute` is computed from.  sllmx computes three (:data:`BUILTIN_NEEDS`):
            ``"generations"`` (default): greedy answers to the split's prompts (chat template,
            ``eval.max_new_tokens``) and the reference answers, two lists of strings;
            ``"pair_logprobs"``: for each preference pair of the split, the model's summed
            log-probability (nats) of the chosen answer and of the rejected answer given the
            prompt, two lists of floats;
            ``"loss"``: one list holding the split's ``eval_loss`` (mean token negative
            log-likelihood); computed at every evaluation of a trainer whose ``loss_is_token_nll`` when the
            trainer lists it in ``loss_metrics`` (``perplexity``) or the config names it (``data.metric``,
            ``eval.metric``).
            Any other value names the metric's own input: sllmx then calls :meth:`inputs`.
    """

    kind = "metric"
    higher_is_better: bool = True
    keys: tuple[str, ...] = ()
    needs: str = NEEDS_GENERATIONS

    def __init__(self) -> None:
        if not self.keys:
            self.keys = (self.name,)

    def inputs(self, model: Any, tokenizer: Any, dataset: Any, settings: dict[str, Any]) -> "MetricInputs | None":
        """Compute this metric's own input (a ``needs`` outside :data:`BUILTIN_NEEDS`) from the model.

        Args:
            model: the model being trained (in training mode; use ``torch.no_grad()`` and restore it).
            tokenizer: the run's tokenizer.
            dataset: the split to score (a ``datasets.Dataset`` in the trainer's layout).
            settings: ``max_new_tokens``, ``batch_size`` (``eval.max_new_tokens``,
                ``eval.generation_batch_size``) and ``runtime`` (:class:`~sllmx.runtime.Runtime`;
                with several processes every rank calls this and must return the same values).

        Returns:
            the arguments of :meth:`compute` (and rows for ``generations.jsonl``), or None when
            the split holds nothing this metric can score (it is then left out).
        """
        raise NotImplementedError(f"metric {self.name!r} needs {self.needs!r}, which sllmx does not compute "
                                  f"({', '.join(BUILTIN_NEEDS)}); it must implement Metric.inputs")

    def compute(self, *args: Any) -> dict[str, float]:
        """Return ``{key: value, ...}`` for ``keys``; the arguments are those ``needs`` names
        (predictions and references, chosen and rejected log-probabilities, ``[loss]``, or
        :attr:`MetricInputs.args` from :meth:`inputs`)."""
        raise NotImplementedError


#: what a :class:`Reward` may read besides the completion
REWARD_READS = ("completion", "reference", "prompt")


class Reward(Plugin):
    """A reward function for an online objective (``trainer=grpo``): a score for each generated completion.

    sllmx hands TRL one function per reward named in ``trainer.rewards`` (``GRPOTrainer(reward_funcs=...)``,
    TRL's name for it is this plugin's ``name``), weighted by ``trainer.reward_weights`` times +1 or -1 for
    :attr:`higher_is_better`, so the objective always maximises.  TRL logs each reward's mean and standard
    deviation (``rewards/<name>/mean``), and the weighted sum's mean as ``reward`` (``eval_reward`` on dev,
    GRPO's dev metric).

    Attributes:
        higher_is_better: the direction of the scores.
        reads: what :meth:`score` reads: ``"completion"`` (always), ``"reference"`` (the split's reference
            answer: the completion of prompt/completion data; a reward that reads it needs such data) and
            ``"prompt"``.
    """

    kind = "reward"
    higher_is_better: bool = True
    reads: Sequence[str] = ("completion",)

    def score(self, completions: list[str], references: list[str] | None, prompts: list[Any]) -> list[float | None]:
        """One score per completion.

        Args:
            completions: the generated answers' text (of a chat completion, the assistant message's content).
            references: the reference answers, aligned with ``completions`` (each prompt's reference repeated for
                its generations), when :attr:`reads` has ``"reference"``; else None.
            prompts: the prompts as the dataset holds them (a string, or a list of chat messages).

        Returns:
            One float per completion (None: this reward does not apply to it; TRL leaves it out of the sum).
        """
        raise NotImplementedError

    def check(self, references: list[str]) -> str | None:
        """Why the data's reference answers cannot be scored (one line naming the first bad one), or None.

        Called for a reward that reads ``"reference"`` with the train and dev references before the objective is
        built (before any completion is generated).  Default: None.
        """
        return None


class Logger(Plugin):
    """Experiment tracking (``logger=<name>``): W&B, or none, or a plugin's.

    sllmx calls a logger on the main process only (rank 0 under torchrun), in this order:
    :meth:`start` once the run's record exists, :meth:`log` at every logging step and evaluation,
    :meth:`finish` after ``run.json`` is final (any status).  An exception in any of them is reported
    as one warning line and does not change the run.  A logger that holds state keeps it on
    ``self`` from :meth:`start` to :meth:`finish` (one run at a time per process).
    """

    kind = "logger"

    def start(self, run: Any, cfg: Any) -> None:
        """A run begins.  ``run``: the :class:`~sllmx.context.RunContext` (``record.config`` is the
        resolved config, ``output_dir`` the run folder); ``cfg``: this logger's options, an instance of its
        ``config`` dataclass."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Numbers the trainer logged at optimizer step ``step``, named as transformers logs them:
        training ``loss``, ``learning_rate``, ``grad_norm``, ...; evaluations ``eval_loss``,
        ``eval_<metric key>``, ``eval_runtime``, ...; the end of training ``train_loss``, ``train_runtime``."""

    def finish(self, record: Any) -> None:
        """The run ended; ``record`` is the final :class:`~sllmx.records.RunRecord` as written to run.json."""

    def publish(self, cfg: Any, title: str, rows: list[dict[str, Any]], summary: dict[str, Any],
                config: dict[str, Any], group: str | None = None, kind: str = "report",
                figures: Sequence[Any] = (), folder: Any = None) -> None:
        """A summary that is no single run, called by sllmx on one process: a sweep's trials
        (``kind="sweep"``, at the end of the study) or a comparison report (``kind="report"``,
        ``python -m sllmx.report --wandb``).  Default: nothing.

        Args:
            cfg: this logger's options (an instance of its ``config`` dataclass).
            title: a name for it (``<study>-summary``, ``<group>-report``).
            rows: the table, one dict per row (trials, or the report's rows).
            summary: scalar results (counts, the best trial's value and parameters, ...).
            config: what produced it (the study's settings, the report's metric and grouping).
            group: the group it belongs with (the study's name), or None.
            figures: PNG / SVG paths to attach.
            folder: where the logger may keep local files (the sweep folder), or None.
        """
