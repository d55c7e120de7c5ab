"""Guardrail checks on generated answers: empty, truncated, personal information, banned patterns,
invalid JSON.

They run on the greedy generations a generation metric (``data.metric``) produces at each dev
evaluation and on test.  The shares go into the evaluation's metrics (``eval_empty_answers``,
``eval_truncated_answers``, ``eval_pii_answers``, ``eval_banned_answers`` and, with
``eval.expect_json=true``, ``eval_invalid_json_answers``: fractions of the answers, lower is
better), so they are logged, kept in the dev history and can be shown by ``python -m sllmx.report
--metrics``; the counts and a few examples of the latest evaluation go into ``run.json`` under
``output_checks``.  PII is found by :mod:`sllmx.data.pii`, the detector the data checks use.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Sequence

from sllmx.errors import SllmxError

#: examples kept per kind of finding
EXAMPLES = 3
#: the metric keys (shares of answers) the checks add
KEYS = ("empty_answers", "truncated_answers", "pii_answers", "banned_answers", "invalid_json_answers")


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern]:
    """Case-insensitive regular expressions of ``eval.banned_patterns``.

    Raises:
        SllmxError: a pattern that is not a valid regular expression, naming it.
    """
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise SllmxError(f"eval.banned_patterns: {p!r} is not a valid regular expression: {exc}") from None
    return out


def is_json(text: str) -> bool:
    """True when ``text`` (stripped, optionally inside a Markdown code fence) parses as JSON."""
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def check_outputs(predictions: Sequence[str], truncated: Sequence[bool], banned: Sequence[re.Pattern],
                  expect_json: bool) -> dict[str, Any]:
    """Count the findings in ``predictions`` (``truncated[i]``: answer i stopped at ``max_new_tokens``).

    Returns:
        ``{"answers": n, "empty", "truncated", "pii", "pii_by_type": {type: matches}, "banned",
        "banned_by_pattern": {pattern: answers}, "invalid_json" (with ``expect_json``), "examples":
        {kind: [answer index, ...]}}``; each count is a number of answers.
    """
    from sllmx.data.pii import find_pii

    found: dict[str, list[int]] = {"empty": [], "truncated": [], "pii": [], "banned": [], "invalid_json": []}
    pii_types: Counter[str] = Counter()
    by_pattern: Counter[str] = Counter()
    for i, text in enumerate(predictions):
        if not text.strip():
            found["empty"].append(i)
        if i < len(truncated) and truncated[i]:
            found["truncated"].append(i)
        matches = find_pii(text)
        if matches:
            found["pii"].append(i)
            pii_types.update(m.type for m in matches)
        hits = [p.pattern for p in banned if p.search(text)]
        if hits:
            found["banned"].append(i)
            by_pattern.update(hits)
        if expect_json and not is_json(text):
            found["invalid_json"].append(i)
    out: dict[str, Any] = {"answers": len(predictions)}
    for kind, idx in found.items():
        if kind != "invalid_json" or expect_json:
            out[kind] = len(idx)
    out["pii_by_type"] = dict(sorted(pii_types.items()))
    out["banned_by_pattern"] = dict(sorted(by_pattern.items()))
    out["examples"] = {kind: idx[:EXAMPLES] for kind, idx in found.items() if idx}
    return out


def as_metrics(checks: dict[str, Any]) -> dict[str, float]:
    """The shares of answers with each finding, keyed as :data:`KEYS` (no ``eval_`` prefix)."""
    n = checks["answers"] or 1
    return {f"{kind}_answers": checks[kind] / n
            for kind in ("empty", "truncated", "pii", "banned", "invalid_json") if kind in checks}
