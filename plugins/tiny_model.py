"""Built-in model source ``tiny``: a tiny random-init Llama with a byte-level BPE tokenizer trained here
on a small corpus written for this project, built in about a second (tests, smoke runs)::

    python -m sllmx model=tiny logger=none

The folder is built once per config into ``<cache_dir>/models/tiny-<hash>`` (:mod:`sllmx.model_cache`).
No torch / transformers import at module level.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.chat_templates import chatml_template
from sllmx.config import ModelConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import ModelSource
from sllmx.model_cache import build_model, read_provenance, short_hash, write_provenance

#: Bump when the tiny model's tokenizer corpus, template or construction changes.
TINY_VERSION = 2


@dataclass
class TinyModelConfig(ModelConfig):
    """``model=tiny``: a tiny random-init Llama with a locally trained byte-level BPE tokenizer (tests, smoke runs)."""

    source: str = option("model source plugin that resolves this config to a local HF directory", "tiny")
    hidden_size: int = option("width of the residual stream (a multiple of num_attention_heads)", 64, ge=1)
    num_hidden_layers: int = option("decoder layers", 2, ge=1)
    num_attention_heads: int = option("attention heads (a multiple of num_key_value_heads)", 4, ge=1)
    num_key_value_heads: int = option("key/value heads (grouped-query attention)", 2, ge=1)
    intermediate_size: int = option("MLP width", 128, ge=1)
    max_position_embeddings: int = option("longest sequence (also the tokenizer's model_max_length)", 1024, ge=2)
    vocab_size: int = option("target vocabulary of the byte-level BPE tokenizer (fewer if the corpus runs out of "
                            "merges)", 1024, ge=1)
    seed: int = option("seed of the random weights; fixed apart from the training seed so the same config gives the "
                      "same model", 0, ge=0)

    def check(self, key: str) -> Optional[str]:
        """The attention heads divide the width, the key/value heads divide the heads."""
        if self.hidden_size % self.num_attention_heads:
            return (f"{key}.hidden_size={self.hidden_size}: must be a multiple of {key}.num_attention_heads="
                    f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            return (f"{key}.num_attention_heads={self.num_attention_heads}: must be a multiple of "
                    f"{key}.num_key_value_heads={self.num_key_value_heads}")
        return None


#: bos, eos and pad of the tiny tokenizer (distinct; eos ends an assistant turn).
TINY_PAD, TINY_BOS, TINY_EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
TINY_SPECIALS = [TINY_PAD, TINY_BOS, TINY_EOS, "<|endoftext|>"]

# A small corpus written for this project (Korean and English customer-support phrases, JSON, digits),
# enough for byte-level BPE merges that keep typical test sequences short.
_KO = """안녕하세요. 주문한 상품이 아직 도착하지 않았어요.
주문번호 확인 부탁드립니다. 배송이 언제 시작되나요?
환불 받고 싶어요. 상품이 파손된 상태로 왔습니다.
사이즈가 맞지 않아서 교환하고 싶습니다. 다른 색상으로 바꿀 수 있을까요?
배송지 주소를 변경하고 싶어요. 이사를 가게 되어서요.
주문을 취소해 주세요. 결제가 두 번 된 것 같아요.
무선 이어폰, 블루투스 스피커, 전기포트, 운동화, 텀블러, 보조배터리, 가습기, 요가 매트를 주문했어요.
수량은 두 개입니다. 오늘 오후에 연락 주세요. 감사합니다.
고객님, 불편을 드려 죄송합니다. 확인 후 빠르게 처리해 드리겠습니다.
문의하신 내용은 담당 부서로 전달되었습니다. 잠시만 기다려 주세요.
날씨가 좋아서 공원에 산책을 갔습니다. 저녁에는 친구와 밥을 먹었어요.
한국어 문장을 잘 처리할 수 있는지 확인합니다. 작은 모델도 학습할 수 있습니다.
어제 주문했는데 아직 배송 준비 중이라고 나옵니다. 지난주 월요일에 결제했어요.
상품을 받았는데 설명과 달라요. 반품 절차를 알려 주세요.
"""
_EN = """Hello, my order has not arrived yet. Could you check the order number, please?
I would like a refund because the item was damaged. Can I exchange it for a different size?
Please change the delivery address. Cancel the order, thank you.
The quick brown fox jumps over the lazy dog. Small language models can learn simple tasks.
Answer with a JSON object. The customer wants to know when the package will be delivered.
You read a customer message and reply with one JSON object only, with the keys intent, order_id, product and quantity.
Intent is one of order_status, refund, exchange, delivery_delay, address_change or cancel; quantity is an integer.
The order number and the product name are copied as written.
"""
_JSON = [
    '{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2}',
    '{"intent": "exchange", "order_id": "B20481", "product": "운동화", "quantity": 1}',
    '{"intent": "order_status", "order_id": "C73019", "product": "텀블러", "quantity": 3}',
    '{"intent": "delivery_delay", "order_id": "K55102", "product": "가습기", "quantity": 4}',
    '{"intent": "address_change", "order_id": "S90876", "product": "요가 매트", "quantity": 5}',
    '{"intent": "cancel", "order_id": "D31415", "product": "보조배터리", "quantity": 1}',
    '[1, 2, 3], {"a": true, "b": false, "c": null}, {"text": "hello", "count": 10}',
]


def _tiny_corpus() -> list[str]:
    lines = [line for line in (_KO + _EN).splitlines() if line.strip()] + _JSON
    lines.append(" ".join(str(i) for i in range(100)))
    lines.append(" ".join(f"{m}월 {d}일" for m in range(1, 13) for d in (1, 5, 10, 15, 20, 25, 30)))
    # the chat format itself, so role headers are single merges
    for role in ("system", "user", "assistant"):
        lines.append(f"{TINY_BOS}{role}\nhello{TINY_EOS}\n")
    return lines * 3


def _tiny_tokenizer(vocab_size: int, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=TINY_BOS, eos_token=TINY_EOS,
                                  pad_token=TINY_PAD, model_max_length=max_length, padding_side="right")
    tok.chat_template = chatml_template()
    return tok


def build_tiny(cfg: TinyModelConfig, out: str) -> None:
    """Write the tiny model described by ``cfg`` to the folder ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    reason = cfg.check("model")
    if reason:
        raise SllmxError(reason)
    opts = dataclasses.asdict(cfg)
    tok = _tiny_tokenizer(int(cfg.vocab_size), int(cfg.max_position_embeddings))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_provenance(out, {"source": "tiny", "version": TINY_VERSION, "config": opts,
                            "vocab_size": len(tok), "parameters": sum(p.numel() for p in model.parameters())})


class TinySource(ModelSource):
    """A tiny random-init Llama with a local byte-level BPE tokenizer, built in about a second (tests, smoke runs)."""

    name = "tiny"
    config = TinyModelConfig

    def resolve(self, cfg: TinyModelConfig, cache_dir: str) -> str:
        opts = {**dataclasses.asdict(cfg), "source": "tiny"}
        key = short_hash(opts, TINY_VERSION)
        return build_model(cache_dir, f"tiny-{key}", lambda tmp: build_tiny(cfg, tmp))

    def facts(self, path: str) -> dict[str, Any]:
        """The build record (``sllmx_model.json``): config, vocabulary size, parameters."""
        return read_provenance(path)


@hookimpl
def sllmx_model_sources() -> list[ModelSource]:
    """Register the tiny model source."""
    return [TinySource()]
