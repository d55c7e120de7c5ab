"""Config schemas shared by the core and plugins (dataclasses for Hydra's ConfigStore).

Field names follow the libraries that consume them: PEFT (``r``, ``lora_alpha``),
TRL / transformers ``TrainingArguments`` (``learning_rate``, ``num_train_epochs``),
``EarlyStoppingCallback`` (``early_stopping_patience``, ``early_stopping_threshold``).
Plugins subclass these bases and set ``name`` / ``source`` to their own name.

Each field declares its allowed values next to its help text (:func:`option`: ``gt``, ``ge``,
``lt``, ``le``, ``choices``, ``plugin``), and a config class may add rules that involve several
fields in a ``check(self, key) -> Optional[str]`` method: called on an instance built from the
composed node, ``key`` being where the node sits (``trainer``), it returns the error line naming the
option and its allowed values, or None.  :func:`sllmx.validate.validate_config` applies both to the
composed config before a run loads anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import MISSING, OmegaConf

from sllmx.runtime import PRECISIONS

#: the metadata keys :func:`option` stores and :mod:`sllmx.validate` checks (besides ``help``)
CONSTRAINTS = ("gt", "ge", "lt", "le", "choices", "plugin")
#: ``transformers.SchedulerType`` values (tests/test_validate.py compares them with the installed transformers)
LR_SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                      "warmup_stable_decay", "greedy")
#: seeds go to ``numpy.random.seed`` (``transformers.set_seed``), which takes 0 to 2**32 - 1
SEED_MAX = 2**32 - 1


def option(text: str, default: Any = MISSING, *, gt: Optional[float] = None, ge: Optional[float] = None,
          lt: Optional[float] = None, le: Optional[float] = None, choices: Optional[Sequence[Any]] = None,
          plugin: Optional[str] = None, **kw: Any) -> Any:
    """``dataclasses.field`` with ``metadata={"help": text}`` (the TRL convention) and the allowed values.

    Args:
        text: the help text.
        default: the default; a list or dict is copied for each instance.  A dict default becomes a
            mapping that takes any key on the command line (``data.columns={prompt: Q}``): Hydra puts the
            whole config in struct mode, where a dict that is empty by default could take no key at all.
        gt, ge, lt, le: bounds of a number (``>``, ``>=``, ``<``, ``<=``).
        choices: the allowed values (of each item, for a list).
        plugin: a plugin kind (``format``, ``metric``, ...) whose registered names are allowed too.
        kw: passed on to ``dataclasses.field``.

    Bounds and choices are stored in the field's metadata under their own names (:data:`CONSTRAINTS`),
    so a plugin's dataclass may equally write ``field(default=8, metadata={"help": ..., "ge": 1})``.
    ``None`` passes every check when the field is ``Optional``.  A subclass that redeclares a field with
    no constraint (a new default) keeps its base class's.  :mod:`sllmx.validate` checks them.
    """
    metadata = {"help": text, **{k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le),
                                                   ("plugin", plugin)) if v is not None}}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, dict):
        return field(default_factory=lambda: _open_dict(default), metadata=metadata, **kw)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def _open_dict(default: dict) -> Any:
    """A copy of ``default`` as an OmegaConf mapping out of struct mode: OmegaConf keeps the flag when it
    builds the structured config, Hydra's merges keep it, so ``key={a: 1}`` overrides may add keys."""
    return OmegaConf.create(dict(default), flags={"struct": False})


@dataclass
class ModelConfig:
    """Base of every ``model=`` config.  ``source`` names the model-source plugin."""

    source: str = option("model source plugin that resolves this config to a local HF directory")


@dataclass
class DataConfig:
    """Base of every ``data=`` config.  ``source`` names the data-source plugin."""

    source: str = option("data source plugin that reads or generates the rows")
    format: str = option("row format (a data-format plugin name), or 'auto' to detect it from the columns", "auto",
                        choices=("auto",), plugin="format")
    columns: dict[str, str] = option("column mapping {canonical: column in the file}, e.g. {prompt: Q, completion: A}", {})
    system: Optional[str] = option("system prompt put first in every conversation", None)
    split_seed: int = option("seed of the dev/test split; fixed apart from the training seed so runs compare on the "
                            "same data", 0, ge=0)
    dev_fraction: float = option("fraction of train held out (seeded) as the dev split when no dev file is given; "
                                "dev_fraction + test_fraction < 1", 0.1, ge=0, lt=1)
    test_fraction: float = option("fraction of train held out (seeded) as the test split when no test file is given",
                                 0.0, ge=0, lt=1)
    max_rows: Optional[int] = option("keep the first N rows of each file (before splitting); null keeps all", None, ge=1)
    max_dev_rows: Optional[int] = option("cap the dev split (evaluations cost time); null keeps all", 200, ge=1)
    metric: Optional[str] = option("generation metric plugin computed on the dev split at each evaluation", None,
                                  plugin="metric")
    skip_invalid: bool = option("skip rows with a missing, empty or mistyped field (counted in run.json) "
                               "instead of stopping with an error", False)
    checks: bool = option("run the data-quality checks before training (PII, duplicates, leakage, labels, "
                         "lengths; report in data_check.json); false turns them all off", True)
    duplicates: str = option("exact and near duplicates within each split: drop (keep the first), report or off",
                            "report", choices=("drop", "report", "off"))
    near_dup_threshold: Optional[float] = option(
        "Jaccard similarity of character 3-grams (MinHash LSH, datasketch) from which two rows are near "
        "duplicates; null: exact duplicates only (after Unicode NFKC, case and whitespace normalisation)", 0.8, gt=0, le=1)
    leakage: str = option("rows shared by train/dev/test (exact or near, by prompt or prompt + response): error "
                         "(stop), drop (remove them from train), report or off", "error",
                         choices=("error", "drop", "report", "off"))
    pii: str = option("personal information (phone, e-mail, resident registration, card and account numbers, "
                     "IP addresses): mask (typed placeholders such as <PHONE>), drop (the row), report or off",
                     "report", choices=("mask", "drop", "report", "off"))
    stratify: Optional[str] = option("column whose value proportions the dev/test hold-out keeps (e.g. label)", None)
    label_column: Optional[str] = option("column whose value counts per split are reported; null: data.stratify, "
                                        "else a column named label, category, intent or class", None)
    lengths: bool = option("token-length statistics with the model's tokenizer and chat template, and a "
                          "suggested trainer.max_length", True)
    augment_k: int = option("instruction-template augmentation: copies of each train example whose request is "
                           "rephrased by one of data.augment_templates (a different one each; train only, seeded "
                           "by split_seed; sllmx.data.augment); 0: off", 0, ge=0)
    augment_templates: Any = option("the templates of data.augment_k: a list of strings each holding "
                                   "{instruction}, or ko (a built-in Korean list of 6)", None)

    def check(self, key: str) -> Optional[str]:
        """The dev and test hold-outs leave rows in train (their fractions sum to below 1)."""
        if self.dev_fraction + self.test_fraction >= 1:
            return (f"{key}.dev_fraction={self.dev_fraction} with {key}.test_fraction={self.test_fraction}: "
                    f"their sum must be < 1 (the rest is train)")
        if self.augment_k and self.augment_templates is None:
            return (f"{key}.augment_k={self.augment_k} needs {key}.augment_templates (a list of templates with "
                    f"{{instruction}}, or ko for the built-in one)")
        return None


@dataclass
class MethodConfig:
    """Base of every ``method=`` config."""

    name: str = option("method plugin name")


@dataclass
class TrainerConfig:
    """Base of every ``trainer=`` config: the TRL / ``TrainingArguments`` fields sllmx sweeps and records.

    Anything else TRL accepts goes in ``args`` (validated by TRL's own config class), but for
    ``resume_from_checkpoint``: a run is resumed with ``resume=auto`` or ``resume=<run folder>``.
    """

    name: str = option("trainer plugin name")
    learning_rate: float = option("peak learning rate of AdamW", 2e-4, gt=0)
    num_train_epochs: float = option("passes over the train split; > 0 unless max_steps > 0", 1.0, ge=0)
    max_steps: int = option("stop after this many optimizer steps (overrides num_train_epochs); -1: train for "
                           "num_train_epochs", -1, ge=-1)
    per_device_train_batch_size: int = option("examples per device per forward pass", 8, ge=1)
    per_device_eval_batch_size: int = option("examples per device per evaluation forward pass", 8, ge=1)
    gradient_accumulation_steps: int = option("forward passes per optimizer step", 1, ge=1)
    max_length: Optional[int] = option("truncate tokenized examples to this many tokens (at least 2: a next-token "
                                      "loss needs a token and the token after it); null: no truncation", 512, ge=2)
    warmup_ratio: float = option("fraction of steps with linear warm-up, in [0, 1) (transformers 5 takes it as "
                                "warmup_steps, where 1 or more counts steps)", 0.0, ge=0, lt=1)
    lr_scheduler_type: str = option("transformers scheduler name (transformers.SchedulerType)", "linear",
                                   choices=LR_SCHEDULER_TYPES)
    weight_decay: float = option("AdamW weight decay", 0.0, ge=0)
    max_grad_norm: float = option("gradient clipping norm; 0: no clipping (transformers' rule)", 1.0, ge=0)
    logging_steps: int = option("log train loss every N steps", 5, ge=1)
    gradient_checkpointing: Optional[bool] = option(
        "recompute activations to save memory (20% more time per CPU step in benchmarks/RESULTS.md); null: on only "
        "when the estimated activation memory of the longest batch exceeds half of the available memory "
        "(run.json memory)",
        None)
    precision: str = option(
        "auto, fp32, bf16 or fp16 (CUDA only): dtype of the base weights and of the mixed-precision compute "
        "(TrainingArguments bf16/fp16). auto: bf16 on a GPU that has it and on a CPU with native bf16 "
        "(avx512_bf16 or amx_bf16), else fp32; the choice and its reason are in run.json precision", "auto",
        choices=PRECISIONS)
    args: dict[str, Any] = option("further keyword arguments for the TRL config class (its own names), e.g. "
                                 "trainer.args={save_total_limit: 2}", {})

    def check(self, key: str) -> Optional[str]:
        """Training has a length (epochs or steps); ``args`` does not resume (``resume=`` does)."""
        if self.max_steps == 0:
            return f"{key}.max_steps=0: must be -1 (train for {key}.num_train_epochs) or >= 1"
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            return (f"{key}.num_train_epochs={self.num_train_epochs}: must be > 0 unless {key}.max_steps > 0 "
                    f"(nothing would be trained)")
        if "resume_from_checkpoint" in (self.args or {}):
            return (f"{key}.args.resume_from_checkpoint={self.args['resume_from_checkpoint']}: not an option here; "
                    f"resuming is done with resume=auto (or resume=<run folder>)")
        return None


@dataclass
class EvalConfig:
    """Dev-split evaluation, model selection and early stopping."""

    metric: Optional[str] = option(
        "dev metric for model selection, early stopping and sweeps (e.g. eval_loss, perplexity, json_fields, "
        "rougeL, bleu, preference_accuracy); "
        "null: the trainer's default", None)
    higher_is_better: Optional[bool] = option("direction of a metric not registered by a plugin; null: from the plugin", None)
    eval_steps: int = option("evaluate on the dev split every N optimizer steps (and at the end)", 20, ge=1)
    early_stopping_patience: Optional[int] = option(
        "stop after this many evaluations without improvement; null disables early stopping", 3, ge=1)
    early_stopping_threshold: float = option("minimum improvement that resets patience", 0.0, ge=0)
    max_new_tokens: int = option("greedy generation length for generation metrics", 128, ge=1)
    generation_batch_size: int = option("dev prompts per generate() call", 32, ge=1)
    before_training: bool = option("also evaluate the untrained model (the baseline in run.json)", True)
    generation_every: int = option(
        "score data.metric (generations cost far more than the loss) at every Nth dev evaluation, and always "
        "before training and at the end; must be 1 when eval.metric is one of its values", 1, ge=1)
    banned_patterns: list[str] = option("regular expressions (case-insensitive) a generated answer must not match; "
                                       "answers that do are counted (eval_banned_answers, run.json output_checks)",
                                       [])
    expect_json: bool = option("answers should be JSON: count those that do not parse (eval_invalid_json_answers)",
                              False)
    general_data: Optional[str] = option(
        "forgetting check: a data file (JSONL, JSON, CSV or Parquet, any row format) scored before and after fine-tuning "
        "(token NLL and perplexity of its answers; run.json forgetting)", None)
    general_max_rows: int = option("rows of eval.general_data scored (the first N)", 200, ge=1)
    forgetting_threshold: float = option("flag forgetting when the general perplexity rises by more than this "
                                        "fraction", 0.1, ge=0)
    test: bool = option("after training, evaluate the selected checkpoint once on the test split "
                       "(run.json test_metrics); model selection never sees it", False)
    rag: Optional[str] = option(
        "evaluate with retrieval: the top eval.rag_k passages of this corpus put into every dev/test prompt "
        "(train: the train split's answers; a folder of .txt/.md files; a .jsonl file with a 'text' field); "
        "training data is unchanged; null: off (docs/baselines.md)", None)
    rag_k: int = option("passages retrieved per prompt (BM25, Korean morphemes by Kiwi)", 3, ge=1)
    rag_embedding_model: Optional[str] = option("a local embedding model folder: dense retrieval instead of BM25 "
                                                "(nothing is downloaded)", None)
    rag_template: str = option("how passages enter the user's message: {passages} ([1] ..., best first) and "
                               "{question}", "Reference passages (use them if they help):\n{passages}\n\n"
                               "Question: {question}")


@dataclass
class LoggerConfig:
    """Base of the loggers' configs: experiment tracking (``logger=<name>``; ``logger=none`` turns it off).
    The built-in ``wandb`` logger's options; a tracker of its own subclasses it or declares a plain dataclass."""

    name: str = option("logger plugin name (wandb, none, or an installed plugin's)", "wandb", plugin="logger")
    project: str = option("project (W&B project)", "sllmx")
    group: Optional[str] = option("group of runs (a sweep puts its study name here)", None)
    run_name: Optional[str] = option("run name; null: method-trainer-seed", None)
    tags: list[str] = option("tags", [])
    mode: Optional[str] = option("wandb.init mode: online, offline, disabled or shared; null: $WANDB_MODE, else online "
                                "with WANDB_API_KEY, else offline", None,
                                choices=("online", "offline", "disabled", "shared"))


@dataclass
class TrialConfig:
    """Which Optuna trial this run serves.  Set by the ``sllmx_optuna`` sweeper, not by hand.

    With ``number`` set, every dev-split evaluation is reported to the trial and the
    study's pruner may stop the run (status ``PRUNED``).  The job reaches the trial through
    the study's storage, so this works in another process or machine too.  Read by the
    built-in plugin ``sllmx_plugins.trials`` (``plugins/trials.py``); the core does not.
    """

    study_name: Optional[str] = option("Optuna study name", None)
    storage: Optional[str] = option("Optuna storage URL of the study (sqlite:///..., postgresql://...)", None)
    number: Optional[int] = option("trial number in the study; null: not part of a sweep", None, ge=0)


@dataclass
class SllmxConfig:
    """The top-level config composed by Hydra (``conf/config.yaml`` fills the groups)."""

    model: Any = MISSING
    data: Any = MISSING
    method: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING  # typed by the chosen logger plugin's config (ConfigStore group logger)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    seed: int = option("seed for data splits, initialisation and training", 42, ge=0, le=SEED_MAX)
    output_dir: str = option("where run.json, the adapter and checkpoints go", "${hydra:runtime.output_dir}")
    cache_dir: str = option("where converted models (GGUF → HF), built tiny models and saved data splits "
                           "with their tokenised forms (sllmx.data.cache) are cached",
                           "${oc.env:SLLMX_CACHE,'~/.cache/sllmx'}")
    shared_data: str = option("folder of the shared real datasets used by the data presets",
                             "${oc.env:SLLMX_SHARED_DATA,../shared/data}")
    save_model: bool = option("save the adapter / model with save_pretrained at the end", True)
    resume: Optional[str] = option(
        "continue an unfinished run (killed, interrupted, failed) from its last full checkpoint: its folder, or "
        "auto (the folder in hydra.run.dir, else the newest unfinished run under outputs/ with the same "
        "overrides; a new run when there is none); null: a new run", None)
