"""The run-level TRL / ``TrainingArguments`` options sllmx decides, the same for training and for evaluating
a split, so both see the same precision, device, batch sizes and seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sllmx.records import DevMetric
from sllmx.runtime import Runtime


def training_args(cfg: DictConfig, runtime: Runtime, dev: DevMetric, checkpoints: Path,
                  gradient_checkpointing: bool = False, resuming: bool = False) -> dict[str, Any]:
    """The run-level TRL/``TrainingArguments`` options sllmx decides (see :meth:`Trainer.build`).

    ``gradient_checkpointing`` is the run's decision (``trainer.gradient_checkpointing``, or
    :func:`sllmx.memory.decide_checkpointing` when that is null).  Checkpoints are saved at each dev
    evaluation with the optimizer, scheduler and RNG states (``save_only_model=False``), so that
    ``resume=`` can continue the run (the cost is in docs/resume.md).  ``resuming``: the run continues
    from a checkpoint, whose baseline evaluation is already recorded (no ``eval_on_start``).
    """
    import dataclasses

    from transformers import TrainingArguments

    # transformers 5.23 renamed gradient_checkpointing to activation_checkpointing
    gc_key = ("activation_checkpointing" if "activation_checkpointing" in
              {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")
    return dict(
        output_dir=str(checkpoints),
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=runtime.accelerator == "cpu",
        bf16=runtime.bf16,
        fp16=runtime.fp16,
        **{gc_key: bool(gradient_checkpointing)},
        # several processes: every trainable weight takes part in each step, so DDP need not search the graph
        # for unused ones (transformers searches for any PEFT model, and with checkpointing that search marks
        # LoRA's weights ready twice: "Expected to mark a variable ready only once", trl #4782, peft #313);
        # +trainer.args.ddp_find_unused_parameters=true for a model whose forward skips some
        ddp_find_unused_parameters=False,
        eval_strategy="steps",
        eval_steps=cfg.eval.eval_steps,
        eval_on_start=bool(cfg.eval.before_training) and not resuming,
        save_strategy="steps",
        save_steps=cfg.eval.eval_steps,
        # the best and the newest checkpoint (transformers keeps both even with 1, but deletes the newest at the
        # end of train(), which would lose the checkpoint an interrupted run resumes from)
        save_total_limit=2,
        # full state (optimizer, scheduler, RNG, trainer state) so resume= can continue the run;
        # +trainer.args.save_only_model=true saves the model only (no resume)
        save_only_model=False,
        load_best_model_at_end=True,
        metric_for_best_model=dev.name,
        greater_is_better=dev.higher_is_better,
        report_to=[],  # the run's logger plugin gets the metrics (sllmx.loggers), not transformers' integrations
        run_name=cfg.logger.get("run_name") or f"{cfg.method.name}-{cfg.trainer.name}-seed{cfg.seed}",
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # the default hides NaN/inf losses from train_loss; a diverged run must FAIL
        disable_tqdm=True,
        dataloader_num_workers=0,
        # sllmx's metrics come from callbacks, not compute_metrics: without this the HF evaluation loop
        # keeps every dev example's logits (examples x tokens x vocabulary floats: 12 GB for 100
        # DialogSum examples with SmolLM2's 49k vocabulary), which got a run OOM-killed
        prediction_loss_only=True,
    )
