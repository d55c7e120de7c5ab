"""PII detection and masking (sllmx.data.pii): every type in Korean and English forms, priorities and
boundaries, false positives, the check-digit helpers, and real Korean chat text.

The real-data tests read ``ko_chatbot/ChatbotData.csv`` from ``$SLLMX_SHARED_DATA`` (else the shared
data folder next to the repository) and skip when it is absent; no dataset text is copied here.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest

from sllmx.data.pii import PII_TYPES, PiiMatch, find_pii, luhn_ok, mask_pii, rrn_ok
from tests.common import SHARED_DATA

CHATBOT = Path(os.environ.get("SLLMX_SHARED_DATA") or SHARED_DATA) / "ko_chatbot" / "ChatbotData.csv"


def rrn_check(first12: str) -> int:
    """The RRN check digit, computed here from the published rule, independently of the module."""
    s = sum(int(d) * w for d, w in zip(first12, [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5]))
    return ((13 if first12[6] in "5678" else 11) - s % 11) % 10


def rrn(first12: str, sep: str = "-", valid: bool = True) -> str:
    last = rrn_check(first12) if valid else (rrn_check(first12) + 1) % 10
    return f"{first12[:6]}{sep}{first12[6:]}{last}"


# (type, value, text put right before the value): one value of every form each detector supports
FORMS = [
    ("RRN", rrn("900101123456"), ""), ("RRN", rrn("900101123456", " "), ""), ("RRN", rrn("900101123456", ""), ""),
    ("RRN", rrn("850615234567"), ""), ("RRN", rrn("051231312345", ""), ""),  # 2000s citizen
    ("RRN", rrn("880808512345"), ""), ("RRN", rrn("020202712345", ""), ""),  # foreigners: the (13 - s) rule
    ("RRN", rrn("210505412345", valid=False), ""),  # issued after Oct 2020: no valid check digit
    ("CARD", "4111 1111 1111 1111", ""), ("CARD", "4111-1111-1111-1111", ""), ("CARD", "4111111111111111", ""),
    ("CARD", "5555 5555 5555 4444", ""), ("CARD", "378282246310005", ""), ("CARD", "3782 822463 10005", ""),
    ("CARD", "3782-822463-10005", ""), ("CARD", "6011 1111 1111 1117", ""),
    ("EMAIL", "hong.gildong@example.com", ""), ("EMAIL", "kim_01+news@mail.example.co.kr", ""),
    ("EMAIL", "USER%x-y@sub-domain.example.org", ""),
    ("PHONE", "010-1234-5678", ""), ("PHONE", "01012345678", ""), ("PHONE", "010 1234 5678", ""),
    ("PHONE", "010.1234.5678", ""), ("PHONE", "011-123-4567", ""), ("PHONE", "019-9876-5432", ""),
    ("PHONE", "+82 10-1234-5678", ""), ("PHONE", "+82-10-1234-5678", ""), ("PHONE", "+821012345678", ""),
    ("PHONE", "+82 (0)10 1234 5678", ""), ("PHONE", "02-123-4567", ""), ("PHONE", "02-1234-5678", ""),
    ("PHONE", "031-123-4567", ""), ("PHONE", "051.234.5678", ""), ("PHONE", "064 712 3456", ""),
    ("PHONE", "070-1234-5678", ""), ("PHONE", "(02) 123-4567", ""), ("PHONE", "02)123-4567", ""),
    ("PHONE", "+82 2 123 4567", ""), ("PHONE", "+82-31-123-4567", ""), ("PHONE", "(202) 555-0143", ""),
    ("PHONE", "202-555-0143", ""), ("PHONE", "+1 202 555 0143", ""), ("PHONE", "+1-202-555-0143", ""),
    ("PHONE", "+44 20 7946 0958", ""), ("PHONE", "+33 1 42 68 53 00", ""), ("PHONE", "+4915112345678", ""),
    ("ACCOUNT", "110-123-456789", ""), ("ACCOUNT", "123456-01-123456", ""), ("ACCOUNT", "1002-123-456789", ""),
    ("ACCOUNT", "352-1234-5678-93", ""), ("ACCOUNT", "3333-01-1234567", ""), ("ACCOUNT", "123-123456-01-011", ""),
    ("ACCOUNT", "110123456789", "신한 "), ("ACCOUNT", "1002123456789", "우리은행 계좌 "),
    ("ACCOUNT", "3333011234567", "카카오뱅크로 송금: "), ("ACCOUNT", "12345678901234", "입금 계좌번호는 "),
    ("ACCOUNT", "9876543210", "bank account no. "), ("ACCOUNT", "12345-678901", "Acct# "),
    ("IP", "192.168.0.1", ""), ("IP", "10.0.0.255", ""), ("IP", "8.8.8.8", ""), ("IP", "2001:db8::1", ""),
    ("IP", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", ""), ("IP", "fe80::1ff:fe23:4567:890a", ""),
    ("IP", "::ffff:192.0.2.1", ""),
]
assert {t for t, _, _ in FORMS} == set(PII_TYPES)


@pytest.mark.parametrize("kind,value,before", FORMS, ids=[f"{t}:{v}" for t, v, _ in FORMS])
def test_every_form_alone_and_with_a_korean_particle(kind, value, before):
    for text in (before + value, f"{before}{value}입니다", f"{before}{value}로 보내 주세요.", f"[{before}{value}]"):
        start = text.index(value)
        assert find_pii(text) == [PiiMatch(kind, start, start + len(value), value)], text
        masked, counts = mask_pii(text)
        assert masked == text.replace(value, f"<{kind}>") and counts == Counter({kind: 1}), text


SENTENCES = [
    ("제 번호는 010-1234-5678이고 이메일은 hong@example.com입니다.", [("PHONE", "010-1234-5678"), ("EMAIL", "hong@example.com")]),
    ("사무실 02-123-4567번으로 전화 주세요", [("PHONE", "02-123-4567")]),
    ("주민등록번호 " + rrn("900101123456") + "를 입력하세요", [("RRN", rrn("900101123456"))]),
    ("카드번호 4111-1111-1111-1111로 결제했어요", [("CARD", "4111-1111-1111-1111")]),
    ("국민은행 123456-01-123456으로 25,000원 입금 부탁드려요", [("ACCOUNT", "123456-01-123456")]),
    ("서버 192.168.0.10에 접속이 안 돼요", [("IP", "192.168.0.10")]),
    ("Call me at (202) 555-0143 or email jane.doe@example.org.", [("PHONE", "(202) 555-0143"),
                                                                  ("EMAIL", "jane.doe@example.org")]),
    ("My card is 4111 1111 1111 1111 and my IP is 2001:db8::42.", [("CARD", "4111 1111 1111 1111"),
                                                                    ("IP", "2001:db8::42")]),
    ("Reach the London office on +44 20 7946 0958, or wire to account 12345678901.",
     [("PHONE", "+44 20 7946 0958"), ("ACCOUNT", "12345678901")]),
    ("연락처: 010-1111-2222, 010.3333.4444 / 입금: 카카오뱅크 3333-01-1234567", [
        ("PHONE", "010-1111-2222"), ("PHONE", "010.3333.4444"), ("ACCOUNT", "3333-01-1234567")]),
]


@pytest.mark.parametrize("text,expected", SENTENCES)
def test_sentences_spans_and_counts(text, expected):
    found = find_pii(text)
    assert [(m.type, m.text) for m in found] == expected
    for m in found:
        assert text[m.start:m.end] == m.text
    masked, counts = mask_pii(text)
    assert counts == Counter(t for t, _ in expected)
    for kind, value in expected:
        assert value not in masked
    assert sum(masked.count(f"<{t}>") for t in PII_TYPES) == len(expected)


NOT_PII = [
    "1,500원", "25,000원", "₩1,200,000", "$19.99", "3만 5천원", "2024년 3월 15일", "2024-03-15", "2024.03.15",
    "24/03/15", "15:30", "15:30:45", "오후 3시 30분", "3개", "120명", "10kg", "1.5L", "2023년", "12.5%",
    "주문번호 20240315-0012", "ORD-123456", "1.2.3", "v1.2.3.4", "1.2.3.4.5", "3.14159", "1588-1234",
    "고객센터 1588-1234로 전화", "2019-2023", "20240315", "제 1234호", "256.1.1.1", "01.02.03.04",
    "4111 1111 1111 1112", "9001011234567", "900230-1234567",
    "010-1234-5678a", "x010-1234-5678", "a..b@example.com", "user@localhost",
]


@pytest.mark.parametrize("text", NOT_PII)
def test_no_false_positives(text):
    assert find_pii(text) == []
    sentence = f"오늘 {text}에 대해 이야기했어요. We talked about {text} today."
    assert find_pii(sentence) == [] and mask_pii(sentence) == (sentence, Counter())


def test_priority_and_boundaries():
    # a phone is never an ACCOUNT, even when only ACCOUNT is asked for
    assert find_pii("계좌 02-1234-5678", types=["ACCOUNT"]) == []
    assert [m.type for m in find_pii("01012345678@example.com")] == ["EMAIL"]
    # a bare 13-digit number passing both the RRN check and Luhn is an RRN
    both = next(n for n in (f"900101123{i:03d}" for i in range(1000)) for n in [n + str(rrn_check(n))]
                if luhn_ok(n))
    assert [m.type for m in find_pii(f"번호 {both}")] == ["RRN"]
    assert [m.type for m in find_pii(f"번호 {both}", types="CARD")] == []
    # no match inside a longer digit run
    assert [m.type for m in find_pii("010-1234-56789")] == ["ACCOUNT"]  # 13 digits in 3 groups, not a phone
    assert [m.type for m in find_pii("1010-1234-5678")] == ["ACCOUNT"]
    assert find_pii("1" + rrn("900101123456", "")) == []
    assert find_pii("ver1.2.3.4") == [] and find_pii("1.2.3.4.5.6") == []


def test_types_filter_and_unknown_type():
    text = "010-1234-5678 / hong@example.com"
    assert [m.type for m in find_pii(text, types=("EMAIL",))] == ["EMAIL"]
    assert mask_pii(text, types=["PHONE"]) == ("<PHONE> / hong@example.com", Counter(PHONE=1))
    with pytest.raises(ValueError, match="NAME"):
        find_pii(text, types=["PHONE", "NAME"])
    with pytest.raises(ValueError, match="phone"):
        mask_pii(text, types=["phone"])


def test_rrn_ok():
    assert rrn_ok(rrn("900101123456", "")) and rrn_ok(rrn("900101123456"))
    assert rrn_ok(rrn("880808512345", "")) and rrn_ok(rrn("051231312345"))
    assert not rrn_ok(rrn("900101123456", "", valid=False))
    assert not rrn_ok(rrn("900230123456"))  # 30 February
    assert not rrn_ok(rrn("050229312345"))  # 2005 is not a leap year (G=3: 2000s) ...
    assert rrn_ok(rrn("040229312345"))  # ... 2004 is
    assert not rrn_ok("90010112345") and not rrn_ok("abcdefghijklm") and not rrn_ok("")


def test_luhn_ok():
    assert luhn_ok("4111111111111111") and luhn_ok("4111 1111 1111 1111") and luhn_ok("378282246310005")
    assert luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")
    assert not luhn_ok("") and not luhn_ok("0") and not luhn_ok("4111x1111")


def _chatbot_rows() -> list[dict[str, str]]:
    if not CHATBOT.is_file():
        pytest.skip(f"real data not found: {CHATBOT} (set SLLMX_SHARED_DATA)")
    with CHATBOT.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_no_pii_found_in_real_korean_chat():
    rows = _chatbot_rows()
    assert len(rows) > 10_000
    found = [(m.type, m.text) for r in rows for field in ("Q", "A") for m in find_pii(r[field])]
    assert found == []  # ~400 rows mention years, months, ages, counts, prices, times: none is PII


TEMPLATES = ["{row} 연락처는 {value}입니다", "{value}로 연락 주세요. {row}", "{row} [{value}]"]


def test_planted_pii_in_real_rows_is_masked():
    rows = _chatbot_rows()
    # every row with a digit (the hard cases) and every 50th row, Q and A; each form goes into every
    # 3rd of them (some 300 rows per form), in one of the templates in turn
    sample = [r[f] for i, r in enumerate(rows) for f in ("Q", "A")
              if i % 50 == 0 or any(c.isdigit() for c in r["Q"] + r["A"])]
    assert len(sample) > 500
    for n, row in enumerate(sample):
        for k, (kind, value, before) in enumerate(FORMS):
            if (n + k) % 3:
                continue
            template = TEMPLATES[(n // 3 + k) % len(TEMPLATES)]
            text = template.format(row=row, value=before + value)
            masked, counts = mask_pii(text)
            assert masked == template.format(row=row, value=f"{before}<{kind}>"), text
            assert counts == Counter({kind: 1}) and value not in masked
