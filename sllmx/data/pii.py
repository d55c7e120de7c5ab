"""Detect and mask personal information (PII) in Korean and English text; stdlib only.

:func:`find_pii` returns non-overlapping :class:`PiiMatch` spans; :func:`mask_pii` replaces each
by ``<TYPE>`` (e.g. ``<PHONE>``).  Every detector is a regex for the shape plus a validator.  All
detectors run in the priority order of :data:`PII_TYPES` and a span, once taken, cannot be taken by
a later type (a phone is never an ACCOUNT, a card never a PHONE), even when only some types are
asked for.  Boundaries: a number never starts or ends inside a longer digit run (no ASCII digit or
letter, and no ``-``/``.`` + digit, right before or after it); Korean text may touch it on either
side, so particles work: ``010-1234-5678로``, ``a@b.com입니다``.

RRN      주민등록번호 ``YYMMDD-GNNNNNN`` (hyphen, space or nothing).  The date must exist in the century
         given by G (1/2/5/6: 1900s, 3/4/7/8: 2000s, 9/0: 1800s; 1-4 citizens, 5-8 foreigners).
         Check digit (Ministry of the Interior rule): weights 2,3,4,5,6,7,8,9,2,3,4,5 on the first 12
         digits, check = (11 - sum % 11) % 10, for foreigners (G 5-8) (13 - sum % 11) % 10.  Numbers
         issued since October 2020 carry random last digits, so with a separator a valid date + G is
         enough; a bare 13-digit run must also pass the check (else any 13-digit number would match).
CARD     13-19 digits, contiguous or grouped 4-4-4-4(-3), 4-6-5 (Amex) or 4-6-4 (Diners) with single
         spaces/hyphens, passing the Luhn check (ISO/IEC 7812-1).
EMAIL    RFC 5322 simplified: ASCII local part ``[A-Za-z0-9._%+-]`` (no leading/trailing/double dot),
         domain labels, letters-only TLD of 2+ characters.  No quoted locals, no IDN domains.
PHONE    Korean numbering plan (KCC): mobile 010/011/016-019 + 3-4 + 4 digits, separators ``-``, ``.``,
         space or none; landlines 02 and 031-033, 041-044, 051-055, 061-064, 070 with separators only
         (``02-123-4567``, ``(02) 123-4567``, ``02)123-4567``); ``+82`` forms without the trunk 0,
         optionally ``(0)``, bare allowed.  North American (NANP) ``(202) 555-0143``, ``202-555-0143``
         (area/exchange 2-9xx).  ITU-T E.164: ``+`` then country code and digit groups, 8-15 digits.
         Business numbers (15xx/16xx/18xx-xxxx), 080 / 050x numbers are not matched.
ACCOUNT  Korean bank accounts: 3-4 hyphenated groups of 2-7 digits (7 for Kakao ``3333-01-1234567``),
         10-14 digits in all; or a 10-14 digit run (bare or hyphenated) at most 12 non-digit
         characters after a keyword (계좌, 입금, 송금, bank names, account/acct/bank).
IP       IPv4 dotted quad, octets 0-255 without leading zeros, not inside a longer dotted number nor
         after a letter (``v1.2.3.4``); IPv6 full / compressed (2+ colons), checked by :mod:`ipaddress`.

Known limits: shapes only, so an order number that happens to look like an account (3-4 hyphenated
groups, 10-14 digits) or a bare Luhn-valid 13-19 digit run is masked, and a 4-part version without
``v`` (``1.2.3.4``) reads as an IP; a 10-14 digit number within 12 characters after a keyword is an
ACCOUNT; an E.164 number followed by a space and another small number absorbs it; RRN dates in the
future are not rejected; names, addresses and other free-text PII are out of scope.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterable, Iterator

PII_TYPES = ("RRN", "CARD", "EMAIL", "PHONE", "ACCOUNT", "IP")  # order = detection priority


@dataclass(frozen=True)
class PiiMatch:
    """One piece of PII: ``text[start:end] == match.text``."""

    type: str
    start: int
    end: int
    text: str


_L = r"(?<![0-9A-Za-z+])(?<![0-9][-.])"  # left boundary of a number
_R = r"(?![0-9A-Za-z])(?![-.][0-9])"  # right boundary of a number
_S = r"[-. ]"  # phone separator
_DIGITS = re.compile(r"\D")


def _ndigits(s: str) -> int:
    return len(_DIGITS.sub("", s))


# --- RRN ------------------------------------------------------------------------------------------
_RRN = re.compile(_L + r"(\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))([- ]?)(\d{7})" + _R)
_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000,
            "9": 1800, "0": 1800}


def _rrn_date_ok(d: str) -> bool:
    try:
        date(_CENTURY[d[6]] + int(d[:2]), int(d[2:4]), int(d[4:6]))
    except ValueError:
        return False
    return True


def rrn_ok(digits13: str) -> bool:
    """Whether a resident registration number has a real date, a gender digit and a right check digit.

    Args:
        digits13: 13 digits; one ``-`` or space after the 6th is allowed (``900101-1234568``).
    Returns:
        True when the date exists in the century given by digit 7 and digit 13 equals
        ``(11 - s % 11) % 10`` (``(13 - s % 11) % 10`` for foreigners, digit 7 in 5-8), where
        ``s`` is the sum of the first 12 digits times 2,3,4,5,6,7,8,9,2,3,4,5.  Numbers issued
        since October 2020 fail the check by design.
    """
    d = digits13.replace("-", "").replace(" ", "")
    if len(d) != 13 or not d.isascii() or not d.isdigit() or not _rrn_date_ok(d):
        return False
    s = sum(int(c) * w for c, w in zip(d, _RRN_WEIGHTS))
    return (((13 if d[6] in "5678" else 11) - s % 11) % 10) == int(d[12])


def _rrn(m: re.Match) -> bool:
    d = m.group(1) + m.group(3)
    return _rrn_date_ok(d) if m.group(2) else rrn_ok(d)


# --- CARD -----------------------------------------------------------------------------------------
_CARD = re.compile(_L + r"(?:\d{13,19}|\d{4}([- ])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([- ])\d{6}\2\d{4,5})" + _R)


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check of ISO/IEC 7812 card numbers.

    Args:
        digits: the number; spaces and hyphens are ignored.
    Returns:
        True when it has 2+ digits, only digits, and the Luhn sum is a multiple of 10.
    """
    d = digits.replace(" ", "").replace("-", "")
    if len(d) < 2 or not d.isascii() or not d.isdigit():
        return False
    total = 0
    for i, c in enumerate(reversed(d)):
        n = int(c) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


# --- EMAIL ----------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")


def _email(m: re.Match) -> bool:
    local = m.group().split("@")[0]
    return not (local.startswith(".") or local.endswith(".") or ".." in local)


# --- PHONE ----------------------------------------------------------------------------------------
_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70)"  # Korean area codes without the trunk 0
_MOB = r"1[016789]"
_PHONE = re.compile(_L + "(?:" + "|".join([
    rf"\+82{_S}?(?:\(0\){_S}?)?(?:{_MOB}|{_AREA}){_S}?\d{{3,4}}{_S}?\d{{4}}",  # +82, trunk 0 dropped
    rf"(?:\(0{_MOB}\) ?|0{_MOB}{_S}?)\d{{3,4}}{_S}?\d{{4}}",  # Korean mobile, bare allowed
    rf"(?:\(0{_AREA}\) ?|0{_AREA}(?:{_S}|\) ?))\d{{3,4}}{_S}\d{{4}}",  # Korean landline
    r"(?:\([2-9]\d\d\) ?[2-9]\d\d[-. ]|[2-9]\d\d-[2-9]\d\d-|[2-9]\d\d\.[2-9]\d\d\.)\d{4}",  # NANP
    r"\+[1-9]\d{0,14}(?:[-. ]?\(\d{1,4}\)[-. ]?\d{1,14}|[-. ]\d{1,14})*",  # E.164
]) + ")" + _R)


def _phone(m: re.Match) -> bool:
    s = m.group()
    return not s.startswith("+") or 8 <= _ndigits(s.replace("(0)", "")) <= 15


# --- ACCOUNT --------------------------------------------------------------------------------------
_ACCOUNT = re.compile(_L + r"\d{2,7}(?:-\d{2,7}){2,3}" + _R)
_ACCOUNT_CONTEXT = re.compile(r"(?:계좌번호|계좌|입금|송금|국민은행|신한|우리은행|하나은행|농협|기업은행|카카오뱅크|토스뱅크"
                              r"|(?<![A-Za-z])(?i:account|acct|bank))[^\d\n]{0,12}(\d+(?:-\d+)*)" + _R)


def _account(m: re.Match) -> bool:
    return 10 <= _ndigits(m.group(m.lastindex or 0)) <= 14


# --- IP -------------------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![0-9A-Za-z.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9A-Za-z])(?!\.\d)")
_IPV6 = re.compile(r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
                   r"(?![0-9A-Za-z:])(?!\.\d)")


def _ipv6(m: re.Match) -> bool:
    s = m.group()
    if s.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", s):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


_DETECTORS: dict[str, list[tuple[re.Pattern, Callable[[re.Match], bool]]]] = {
    "RRN": [(_RRN, _rrn)],
    "CARD": [(_CARD, lambda m: luhn_ok(m.group()))],
    "EMAIL": [(_EMAIL, _email)],
    "PHONE": [(_PHONE, _phone)],
    "ACCOUNT": [(_ACCOUNT, _account), (_ACCOUNT_CONTEXT, _account)],
    "IP": [(_IPV6, _ipv6), (_IPV4, lambda m: True)],
}


def _candidates(kind: str, text: str) -> Iterator[tuple[int, int]]:
    for pattern, valid in _DETECTORS[kind]:
        for m in pattern.finditer(text):
            if valid(m):
                yield m.span(m.lastindex if pattern is _ACCOUNT_CONTEXT else 0)


def _check_types(types: Iterable[str]) -> set[str]:
    wanted = {types} if isinstance(types, str) else set(types)
    for t in wanted:
        if t not in PII_TYPES:
            raise ValueError(f"unknown PII type {t!r}; known: {', '.join(PII_TYPES)}")
    return wanted


def find_pii(text: str, types: Iterable[str] = PII_TYPES) -> list[PiiMatch]:
    """Find personal information in ``text``.

    Args:
        text: any Korean / English text.
        types: the kinds to report, a subset of :data:`PII_TYPES` (a single name works too).  All
            kinds are still detected so that priority holds: a phone is not reported as an ACCOUNT
            when only ACCOUNT is asked for.
    Returns:
        Non-overlapping matches sorted by start; on overlap the earlier type of PII_TYPES wins.
    Raises:
        ValueError: a name in ``types`` is not one of :data:`PII_TYPES`.
    """
    wanted = _check_types(types)
    taken: list[tuple[int, int, str]] = []
    for kind in PII_TYPES:
        for start, end in _candidates(kind, text):
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    return [PiiMatch(k, s, e, text[s:e]) for s, e, k in sorted(taken) if k in wanted]


def mask_pii(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, Counter[str]]:
    """Replace each match of :func:`find_pii` by ``<TYPE>`` (``<PHONE>``, ``<EMAIL>`` ...).

    Args:
        text: any Korean / English text.
        types: the kinds to mask (see :func:`find_pii`).
    Returns:
        The masked text and how many matches of each type were replaced.
    Raises:
        ValueError: a name in ``types`` is not one of :data:`PII_TYPES`.
    """
    matches = find_pii(text, types)
    parts, pos = [], 0
    for m in matches:
        parts += [text[pos:m.start], f"<{m.type}>"]
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), Counter(m.type for m in matches)
