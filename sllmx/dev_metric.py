"""Which metric selects the model: the dev metric of a run (``eval.metric``) and its direction."""

from __future__ import annotations

from omegaconf import DictConfig

from sllmx.errors import SllmxError
from sllmx.interfaces import NEEDS_LOSS, Trainer
from sllmx.plugins import Registry
from sllmx.records import DevMetric


def dev_metric_of(cfg: DictConfig, trainer: Trainer, reg: Registry) -> DevMetric:
    """The dev metric (as logged, ``eval_``-prefixed) and its direction.

    ``eval.metric`` may name the trainer's default (e.g. ``eval_loss``), a value a
    generation metric plugin returns (e.g. ``json_exact`` from ``json_fields``; that
    plugin must be the data's ``data.metric``), a value a metric computed from the loss
    returns (``perplexity``; the trainer's loss must be the token NLL), or anything else the
    trainer logs, whose direction ``eval.higher_is_better`` must then give.

    Raises:
        SllmxError: when the metric would never be computed or its direction is unknown.
    """
    bare = (cfg.eval.metric or trainer.dev_metric).removeprefix("eval_")
    producer = next((m for m in reg.entries["metric"].values() if bare in m.obj.keys), None)
    if producer is not None and producer.obj.needs == NEEDS_LOSS:
        if not trainer.loss_is_token_nll:
            raise SllmxError(f"eval.metric={bare} is computed from the loss, and trainer={trainer.name}'s loss is not "
                             f"the mean token negative log-likelihood; use eval_loss or a metric plugin")
    elif producer is not None and cfg.data.get("metric") != producer.name:
        raise SllmxError(f"eval.metric={bare} is computed by the metric plugin {producer.name!r}, which this data "
                         f"config does not run; set data.metric={producer.name}")
    higher = cfg.eval.higher_is_better
    if higher is None:
        if bare == trainer.dev_metric.removeprefix("eval_"):
            higher = trainer.higher_is_better
        elif producer is not None:
            higher = producer.obj.higher_is_better
        elif bare.endswith("loss"):
            higher = False
        else:
            raise SllmxError(f"eval.metric={bare}: its direction is unknown; set eval.higher_is_better=true|false")
    return DevMetric(name=f"eval_{bare}", higher_is_better=bool(higher))
