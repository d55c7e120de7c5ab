"""The built-in example task ``support_ko``: Korean customer-support messages → a JSON object.

Usage::

    python -m sllmx data=support_ko                       # 256 train / 32 dev / 64 test rows
    python -m sllmx data=support_ko data.n_train=512 data.seed=1

A seeded generator (every template, product and phrase below was written for this project; no
third-party text) produces short Korean customer-support messages — order inquiries, refunds,
exchanges, delivery delays, address changes, cancellations — each naming an order number, a
product and a quantity, among distractors (dates, addresses, greetings).  The answer is a compact
JSON object with fixed keys::

    {"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2}

i.e. one classification (``intent``, six labels) plus three extractions copied from the text
(``order_id`` and ``product`` verbatim, ``quantity`` as an integer), so a small model can learn it
in a few hundred steps and the answers can be checked automatically (metric ``json_fields``).

Rows are preference pairs (``prompt`` / ``chosen`` / ``rejected``, TRL's conversational form): the
rejected answer is the chosen one with exactly one field wrong (another intent, one digit of the
order number changed, another product, another quantity), so DPO / ORPO / KTO get a real signal;
the ``preference`` format turns rows into SFT prompt/completion (the chosen answer), DPO pairs or
KTO unpaired rows.  The system prompt stating the task and the keys is ``data.system`` (the
format puts it first in every prompt), so it can be replaced from the command line.

One module (~360 lines) holds the task's source, its word lists and the ``json_fields`` metric that
scores it, so the built-in task reads as one unit; most of its length is the phrase lists.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import DataConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import DataSource, Metric, RawSplit, Reward

#: The answer's keys, in order.
KEYS = ("intent", "order_id", "product", "quantity")

#: The intent labels and what they mean.
INTENTS = {
    "order_status": "주문 상태 문의",
    "refund": "환불 요청",
    "exchange": "교환 요청",
    "delivery_delay": "배송 지연 문의",
    "address_change": "배송지 변경",
    "cancel": "주문 취소",
}

#: In English: the task is Korean, but SmolLM2's tokenizer spends ~3.4x more tokens on a Korean instruction
#: (254 vs 74 tokens), and every training example carries it.
SYSTEM_PROMPT = (
    "You read a Korean customer-support message and reply with one JSON object only, with the keys "
    "\"intent\" (one of order_status, refund, exchange, delivery_delay, address_change, cancel), "
    "\"order_id\" (the order number as written), \"product\" (the product name as written) "
    "and \"quantity\" (an integer)."
)

# ---------------------------------------------------------------------------
# Vocabulary of the generator (written for this project)
# ---------------------------------------------------------------------------

PRODUCTS = [
    "무선 이어폰", "블루투스 스피커", "전기포트", "운동화", "후드티", "텀블러", "노트북 거치대", "보조배터리",
    "가습기", "캠핑 의자", "요가 매트", "기계식 키보드", "무선 마우스", "선풍기", "에어프라이어", "백팩",
    "장우산", "손목시계", "머그컵", "프라이팬", "스마트워치", "충전 케이블", "휴대폰 케이스", "전동칫솔",
    "헤어드라이어", "메모리폼 베개", "여름 이불", "수건 세트", "보온병", "책상 조명", "청바지", "슬리퍼",
    "전자레인지", "커피 원두", "물티슈", "게이밍 모니터",
]
ADDRESSES = [
    "서울시 마포구", "서울시 강남구", "부산시 해운대구", "대구시 수성구", "인천시 연수구", "광주시 북구",
    "대전시 유성구", "울산시 남구", "수원시 영통구", "제주시 연동", "성남시 분당구", "춘천시 효자동",
]
GREETINGS = ["", "", "안녕하세요.", "수고하십니다.", "문의드립니다.", "안녕하세요, 고객센터죠?", "저기요,"]
CLOSINGS = ["", "", "감사합니다.", "빠른 답변 부탁드려요.", "확인 부탁드립니다.", "연락 기다릴게요.", "답변 부탁해요!"]
RELATIVE_DAYS = ["어제", "그저께", "지난주", "지난 월요일", "지난 금요일", "사흘 전", "이번 주 초"]
ID_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

#: Templates per intent.  Slots: {oid} {product} {qty} {date} {addr}, and {product_을} / {product_이} /
#: {product_은} / {addr_로} / {date_에} with the right Korean particle.
TEMPLATES = {
    "order_status": [
        "{date_에} 주문한 {product} {qty}개 주문 상태 좀 확인해 주세요. 주문번호는 {oid}입니다.",
        "주문번호 {oid}, {product} {qty}개 지금 어디까지 진행됐는지 알 수 있을까요?",
        "{oid} 주문 건 처리 상황이 궁금합니다. {product_을} {qty}개 주문했어요.",
        "{product} {qty}개 결제했는데 주문이 정상적으로 접수됐는지 확인 부탁드려요. 주문번호 {oid}",
        "주문 조회 문의입니다. 주문번호 {oid}, 상품은 {product} {qty}개예요. 발송 준비 중인가요?",
        "{date} 결제한 주문({oid}) 상태가 어떻게 되나요? {product} {qty}개입니다.",
    ],
    "refund": [
        "{date_에} 받은 {product} {qty}개 환불 요청합니다. 주문번호는 {oid}입니다.",
        "주문번호 {oid} {product_이} 불량이라 {qty}개 모두 환불받고 싶어요.",
        "{product} {qty}개 반품하고 환불해 주세요. 주문번호: {oid}",
        "마음에 들지 않아서 환불하려고 합니다. {product} {qty}개, 주문번호 {oid}.",
        "{oid} 주문으로 산 {product} {qty}개, 환불 가능한가요? 포장은 뜯지 않았어요.",
        "환불 문의예요. {date} 도착한 {product_이} 설명과 달라요. 수량 {qty}개, 주문번호 {oid}입니다.",
    ],
    "exchange": [
        "주문번호 {oid} 주문으로 받은 {product} {qty}개를 다른 사이즈로 교환하고 싶어요.",
        "{product} 색상이 주문한 것과 달라서 교환 신청합니다. 수량 {qty}개, 주문번호 {oid}.",
        "{date_에} 도착한 {product} {qty}개 새 제품으로 교환 가능할까요? 주문번호는 {oid}입니다.",
        "{oid} 주문 {product} {qty}개, 교환 접수 부탁드립니다.",
        "교환 요청입니다. {product_은} {qty}개 받았는데 흠집이 있어요. 주문번호 {oid}",
        "주문번호 {oid} {product} {qty}개를 같은 상품 다른 색으로 바꿔 주실 수 있나요?",
    ],
    "delivery_delay": [
        "{date_에} 주문한 {product} {qty}개가 아직도 안 왔어요. 주문번호 {oid}인데 배송이 왜 이렇게 늦나요?",
        "주문번호 {oid} 배송이 일주일째 그대로예요. {product} {qty}개 언제 받을 수 있나요?",
        "{product} {qty}개 주문했는데 도착 예정일이 지났습니다. 주문번호 {oid} 확인 부탁드려요.",
        "{oid} 주문한 {product} {qty}개 배송이 너무 지연되고 있어요.",
        "배송 지연 문의입니다. {date} 주문한 {product_이} 아직 출발도 안 했대요. {qty}개, 주문번호 {oid}.",
        "택배가 며칠째 같은 곳에 멈춰 있어요. 주문번호 {oid}, {product} {qty}개입니다.",
    ],
    "address_change": [
        "주문번호 {oid} 배송지를 {addr_로} 바꾸고 싶어요. {product} {qty}개 주문했습니다.",
        "{product} {qty}개 주문한 사람인데요, 이사를 가서 주소 변경 부탁드립니다. 주문번호 {oid}.",
        "{oid} 주문 건 받는 주소를 {addr_로} 수정할 수 있나요? 상품은 {product} {qty}개예요.",
        "배송지 변경 요청합니다. 주문번호 {oid}, {product} {qty}개, 새 주소는 {addr}입니다.",
        "{date} 주문한 {product} {qty}개 배송 주소를 잘못 적었어요. {addr_로} 보내 주세요. 주문번호 {oid}",
        "주소를 바꿔야 해서 연락드려요. {oid} 주문, {product} {qty}개요.",
    ],
    "cancel": [
        "주문번호 {oid} 주문 취소해 주세요. {product} {qty}개 잘못 주문했어요.",
        "{date_에} 주문한 {product} {qty}개, 아직 발송 전이면 취소하고 싶습니다. 주문번호 {oid}.",
        "{product} {qty}개 주문({oid}) 취소 부탁드립니다.",
        "주문 취소 요청이요. {product_을} {qty}개 샀는데 필요 없어졌어요. 주문번호 {oid}",
        "실수로 {product} {qty}개를 주문했습니다. 주문번호 {oid} 전체 취소해 주세요.",
        "{oid} 주문 취소 가능한가요? {product} {qty}개 결제했는데 다른 곳에서 샀어요.",
    ],
}


def _final(word: str) -> int:
    """Index of the final consonant (batchim) of the word's last Hangul syllable; 0 when none."""
    code = ord(word[-1]) - 0xAC00
    return code % 28 if 0 <= code < 11172 else 0


def _particle(word: str, with_final: str, without_final: str) -> str:
    return word + (with_final if _final(word) else without_final)


def _ro(word: str) -> str:
    """``word`` + 으로/로 (로 after a vowel or ㄹ)."""
    f = _final(word)
    return word + ("로" if f in (0, 8) else "으로")


def answer_json(answer: dict[str, Any]) -> str:
    """The answer as the model should write it: compact JSON, keys in :data:`KEYS` order, Korean kept."""
    return json.dumps({k: answer[k] for k in KEYS}, ensure_ascii=False)


def _order_id(rng: random.Random) -> str:
    return rng.choice(ID_LETTERS) + str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(4))


def _date(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(RELATIVE_DAYS)
    return f"{rng.randint(1, 12)}월 {rng.randint(1, 28)}일"


def make_example(intent: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One user message of ``intent`` and its answer."""
    product, qty, oid = rng.choice(PRODUCTS), rng.randint(1, 5), _order_id(rng)
    addr, date = rng.choice(ADDRESSES), _date(rng)
    slots = {
        "oid": oid, "product": product, "qty": qty, "date": date, "addr": addr,
        "date_에": date if date in ("어제", "그저께") else date + "에",
        "product_을": _particle(product, "을", "를"), "product_이": _particle(product, "이", "가"),
        "product_은": _particle(product, "은", "는"), "addr_로": _ro(addr),
    }
    body = rng.choice(TEMPLATES[intent]).format(**slots)
    text = " ".join(part for part in (rng.choice(GREETINGS), body, rng.choice(CLOSINGS)) if part)
    return text, {"intent": intent, "order_id": oid, "product": product, "quantity": qty}


def corrupt(answer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A plausible wrong answer: ``answer`` with exactly one field changed."""
    wrong = dict(answer)
    field = rng.choice(KEYS)
    if field == "intent":
        wrong["intent"] = rng.choice([i for i in INTENTS if i != answer["intent"]])
    elif field == "order_id":
        oid = answer["order_id"]
        pos = rng.randrange(1, len(oid))
        digit = rng.choice([d for d in "0123456789" if d != oid[pos] and not (pos == 1 and d == "0")])
        wrong["order_id"] = oid[:pos] + digit + oid[pos + 1:]
    elif field == "product":
        wrong["product"] = rng.choice([p for p in PRODUCTS if p != answer["product"]])
    else:
        wrong["quantity"] = rng.choice([q for q in range(1, 10) if q != answer["quantity"]])
    return wrong


def generate(n_train: int = 256, n_dev: int = 32, n_test: int = 64, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The rows of each split, determined by ``seed`` alone.

    Each split draws from its own random stream (test, then dev, then train), skipping any user
    message already used by an earlier split, so the splits never share a message and changing
    ``n_train`` leaves dev and test as they were.  Intents are balanced within each split.
    """
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    intents = list(INTENTS)
    for split, n in (("test", n_test), ("dev", n_dev), ("train", n_train)):
        if n < 0:
            raise SllmxError(f"data.n_{split} must be >= 0, got {n}")
        rng = random.Random(f"support_ko:{seed}:{split}")
        rows: list[dict[str, Any]] = []
        attempts = 0
        while len(rows) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise SllmxError(f"data=support_ko: could not generate {n} distinct {split} messages")
            intent = intents[len(rows) % len(intents)]
            text, answer = make_example(intent, rng)
            if text in seen:
                continue
            seen.add(text)
            rows.append({
                "prompt": [{"role": "user", "content": text}],
                "chosen": [{"role": "assistant", "content": answer_json(answer)}],
                "rejected": [{"role": "assistant", "content": answer_json(corrupt(answer, rng))}],
            })
        rng.shuffle(rows)
        out[split] = rows
    return out


# ---------------------------------------------------------------------------
# Data source
# ---------------------------------------------------------------------------


@dataclass
class SupportTaskConfig(DataConfig):
    """``data=support_ko``: the generated Korean customer-support → JSON task."""

    source: str = option("data source plugin that reads or generates the rows", "support_ko")
    format: str = option("row format (a data-format plugin name), or 'auto' to detect it from the columns",
                        "preference")
    system: Optional[str] = option("system prompt put first in every conversation (states the task and the JSON keys)",
                                  SYSTEM_PROMPT)
    metric: Optional[str] = option("generation metric plugin computed on the dev split at each evaluation",
                                  "json_fields")
    n_train: int = option("generated train rows (256: 32 steps of 8, about five minutes for SmolLM2-135M with LoRA "
                         "on 2 CPU cores, exact match 0 -> 0.31: benchmarks/RESULTS.md section 10)", 256, ge=1)
    n_dev: int = option("generated dev rows (model selection, early stopping; 32: an exact-match share is known to "
                       "about +-0.16 at 95%)", 32, ge=1)
    n_test: int = option("generated test rows (reported once at the end)", 64, ge=0)
    seed: int = option("seed of the generator; fixed apart from the training seed so runs compare on the same data", 0,
                      ge=0)


class SupportTaskSource(DataSource):
    """Generated Korean customer-support messages → JSON {intent, order_id, product, quantity} (preference pairs)."""

    name = "support_ko"
    config = SupportTaskConfig

    def load(self, cfg: Any) -> dict[str, RawSplit]:
        rows = generate(cfg.n_train, cfg.n_dev, cfg.n_test, cfg.seed)
        origin = f"support_ko(seed={cfg.seed})"
        return {split: RawSplit(rows=rows[split], origin=f"{origin}/{split}") for split in ("train", "dev", "test")}


# ---------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------


def first_json_object(text: Any) -> Optional[dict[str, Any]]:
    """The first JSON object (``{...}``) that parses in ``text``, or ``None``.

    Tries each ``{`` from the left and decodes as much as makes one JSON value, so text around the
    object (a code fence, a sentence) is ignored.
    """
    if isinstance(text, list):  # a message list: the last message's content
        text = text[-1].get("content", "") if text and isinstance(text[-1], dict) else ""
    if not isinstance(text, str):
        return None
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


def _same(a: Any, b: Any) -> bool:
    """JSON equality that keeps ``true`` apart from ``1`` (Python's ``True == 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class JsonFieldsMetric(Metric):
    """Field accuracy of the first JSON object in each generation against the reference object.

    For N examples with reference objects R_i (key set K_i) and predicted objects P_i (the first
    ``{...}`` that parses in the generation; none when nothing parses):

    - ``json_fields`` = (1/N) Σ_i |{k ∈ K_i : k ∈ P_i and P_i[k] == R_i[k]}| / |K_i|
      (a missing key, or a generation without a JSON object, counts every field wrong; extra keys
      are ignored; values compare as parsed JSON, so ``"2"`` ≠ ``2`` and ``true`` ≠ ``1``, but ``2.0`` = ``2``);
    - ``json_exact`` = (1/N) Σ_i [P_i == R_i]  (every field right and no extra key);
    - ``json_valid`` = (1/N) Σ_i [P_i exists].

    All three are 0.0 when N = 0.  Higher is better.
    """

    name = "json_fields"
    higher_is_better = True
    keys = ("json_fields", "json_exact", "json_valid")

    def compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        if len(predictions) != len(references):
            raise ValueError(f"json_fields: {len(predictions)} predictions but {len(references)} references")
        scores = [json_scores(pred, ref, i) for i, (pred, ref) in enumerate(zip(predictions, references))]
        n = len(scores)
        if n == 0:
            return {"json_fields": 0.0, "json_exact": 0.0, "json_valid": 0.0}
        return {key: sum(s[key] for s in scores) / n for key in self.keys}


def json_scores(prediction: Any, reference: Any, i: int = 0) -> dict[str, float]:
    """One example's ``json_fields`` (fraction of the reference's fields right), ``json_exact`` and ``json_valid``
    (each 0 or 1), as :class:`JsonFieldsMetric` defines them.

    Raises:
        ValueError: the reference (example ``i``) is not a non-empty JSON object.
    """
    want = first_json_object(reference)
    if not want:
        raise ValueError(f"json_fields: reference {i} is not a non-empty JSON object: {reference!r}")
    got = first_json_object(prediction)
    if got is None:
        return {"json_fields": 0.0, "json_exact": 0.0, "json_valid": 0.0}
    right = sum(1 for k, v in want.items() if k in got and _same(got[k], v))
    return {"json_fields": right / len(want), "json_exact": float(right == len(want) and len(got) == len(want)),
            "json_valid": 1.0}


# ---------------------------------------------------------------------------
# Rewards (trainer=grpo): the metric's per-example scores
# ---------------------------------------------------------------------------


class JsonValidReward(Reward):
    """1 when the completion holds a JSON object (the first ``{...}`` that parses), else 0."""

    name = "json_valid"
    reads = ("completion",)

    def score(self, completions, references, prompts):
        return [float(first_json_object(c) is not None) for c in completions]


class JsonFieldsReward(Reward):
    """The fraction of the reference object's fields the completion's first JSON object gets right (0 to 1;
    :class:`JsonFieldsMetric`'s ``json_fields`` for one example)."""

    name = "json_fields"
    reads = ("completion", "reference")

    def score(self, completions, references, prompts):
        return [json_scores(c, r, i)["json_fields"] for i, (c, r) in enumerate(zip(completions, references))]

    def check(self, references):
        """The first reference that is not a non-empty JSON object (the data is not this task's kind)."""
        bad = next((i for i, r in enumerate(references) if not first_json_object(r)), None)
        return None if bad is None else (f"reference answer {bad} is not a JSON object ({str(references[bad])[:60]!r}); "
                                         f"json_fields scores JSON answers")


@hookimpl
def sllmx_data_sources() -> list[DataSource]:
    """Register the support_ko generated task."""
    return [SupportTaskSource()]


@hookimpl
def sllmx_metrics() -> list[Metric]:
    """Register the json_fields metric."""
    return [JsonFieldsMetric()]


@hookimpl
def sllmx_rewards() -> list[Reward]:
    """Register the json_valid and json_fields rewards."""
    return [JsonValidReward(), JsonFieldsReward()]
