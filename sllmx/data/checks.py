"""Data-quality checks run before every training run and by ``python -m sllmx.data check``.

The pipeline (:func:`sllmx.data.pipeline.load_splits`) calls them in this order, on the rows
after conversion (so every format is checked the same way) and before the datasets are built:

1. invalid rows (a missing, empty or mistyped field): file and line of each;
2. PII (:mod:`sllmx.data.pii`): counted by type; ``data.pii=mask|drop|report|off``;
3. duplicates within each split (:mod:`sllmx.data.dedup`): exact and near, by prompt and by
   prompt + response; ``data.duplicates=drop|report|off`` (drop keeps the first of each group);
4. the seeded dev/test hold-out (when no dev/test file is given) keeps every group of
   duplicates in one split, optionally stratified by ``data.stratify``;
5. leakage between train, dev and test: exact and near duplicates by prompt and by prompt +
   response; ``data.leakage=error`` (default: stop, naming counts and example lines),
   ``drop`` (remove them from train, and dev rows shared with test from dev), ``report`` or ``off``;
6. label balance per split where a label column exists;
7. token lengths (:mod:`sllmx.data.lengths`), once the model's tokenizer is loaded.

Everything found goes into a :class:`DataReport`: ``data_check.json`` beside ``run.json``, its
:meth:`~DataReport.summary` in ``run.json`` under ``data_checks``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sllmx.errors import SllmxError

#: columns whose value counts are reported when ``data.label_column`` is not set
LABEL_COLUMNS = ("label", "labels", "category", "intent", "class")
#: example pairs quoted in a report or an error message
EXAMPLES = 3
KEYS = ("full", "prompt")  # prompt + response, prompt alone
#: the report's file name, beside run.json
DATA_CHECK_FILE = "data_check.json"


#: the ``data.*`` options the checks read (their help: :class:`sllmx.config.DataConfig`)
CHECK_FIELDS = ("duplicates", "near_dup_threshold", "leakage", "pii", "stratify", "label_column", "lengths")


def check_options(data: Any) -> dict[str, Any]:
    """The options of the checks as ``data_check.json`` records them: ``enabled`` (``data.checks``) and
    :data:`CHECK_FIELDS` of the ``data`` config instance."""
    return {"enabled": bool(data.checks), **{key: getattr(data, key) for key in CHECK_FIELDS}}


@dataclass
class DataReport:
    """What the checks found.  Every count is of rows (raw rows of the data files).

    Attributes:
        options: the options used (:func:`check_options`).
        splits: ``{split: {"origin", "rows", "format", "layout"}}`` after the checks.
        invalid: ``[{"split", "where", "field", "message"}]`` rows a format refused.
        pii: ``{split: {"rows": n, "by_type": {type: n}, "action", "dropped", "examples"}}``.
        duplicates: ``{split: {"exact": n, "near": n, "exact_prompt": n, "near_prompt": n,
            "action", "dropped", "examples"}}``; ``exact``/``near`` compare prompt + response.
        leakage: ``{"pairs": {"train-dev": {"exact": n, "near": n, "exact_prompt": n,
            "near_prompt": n, "examples"}, "train-test": ..., "dev-test": ...}, "action",
            "dropped", "from"}``; the counts are rows of the first split of the pair that
            repeat a row of the second.
        labels: ``{"column": name, split: {value: n}}``, empty without a label column.
        lengths: see :func:`sllmx.data.lengths.length_report`.
        warnings: one line each, also logged.
    """

    options: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    pii: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: dict[str, dict[str, Any]] = field(default_factory=dict)
    leakage: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, **asdict(self)}

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically (see :func:`sllmx.atomic.write_text_atomic`)."""
        from sllmx.atomic import write_text_atomic

        return write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    def summary(self) -> dict[str, Any]:
        """The counts alone (no examples), for ``run.json``."""
        def bare(d: dict) -> dict:
            return {k: v for k, v in d.items() if k != "examples"}

        out: dict[str, Any] = {"invalid": len(self.invalid),
                               "pii": {s: bare(v) for s, v in self.pii.items()},
                               "duplicates": {s: bare(v) for s, v in self.duplicates.items()},
                               "leakage": {**self.leakage, "pairs": {s: bare(v) for s, v in
                                                                      self.leakage.get("pairs", {}).items()}},
                               "warnings": list(self.warnings)}
        if self.lengths:
            out["lengths"] = {k: v for k, v in self.lengths.items() if k != "by_split"}
        return out

    def warn(self, message: str) -> None:
        import logging

        logging.getLogger("sllmx.data").warning(message)
        self.warnings.append(message)

    def lines(self) -> list[str]:
        """A readable summary for the terminal."""
        out = ["splits: " + ", ".join(f"{s} {v['rows']} rows ({v['origin']})" for s, v in self.splits.items())]
        if self.invalid:
            out.append(f"invalid rows: {len(self.invalid)}; first: {self.invalid[0]['where']}: field "
                       f"{self.invalid[0]['field']!r}: {self.invalid[0]['message']}")
        for split, d in self.pii.items():
            if d["rows"]:
                kinds = ", ".join(f"{k} {n}" for k, n in d["by_type"].items())
                out.append(f"PII in {split}: {d['rows']} rows ({kinds}); action {d['action']}")
        for split, d in self.duplicates.items():
            out.append(f"duplicates in {split} (prompt + response): exact {d['exact']}, near {d['near']}; "
                       f"by prompt: exact {d['exact_prompt']}, near {d['near_prompt']}"
                       + (f"; dropped {d['dropped']}" if d.get("dropped") else ""))
            out += [f"    {e}" for e in d.get("examples", [])]
        for pair, d in self.leakage.get("pairs", {}).items():
            out.append(f"leakage {pair}: exact {d['exact']}, near {d['near']}; by prompt: exact "
                       f"{d['exact_prompt']}, near {d['near_prompt']}")
            out += [f"    {e}" for e in d.get("examples", [])]
        if self.leakage.get("dropped"):
            out.append(f"leakage: dropped {self.leakage['dropped']} rows ({self.leakage['from']})")
        if self.labels:
            column = self.labels["column"]
            for split, counts in self.labels.items():
                if split != "column":
                    out.append(f"{column} in {split}: " + ", ".join(f"{k}: {n}" for k, n in counts.items()))
        if self.lengths:
            from sllmx.data.lengths import describe

            out += describe(self.lengths)
        out += [f"warning: {w}" for w in self.warnings]
        return out


# ---------------------------------------------------------------------------
# The text of a row
# ---------------------------------------------------------------------------

def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # messages: the content of every non-system message
        return "\n".join(_content(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value
                         if not (isinstance(m, dict) and m.get("role") == "system"))
    return "" if value is None else str(value)


def row_text(examples: list[dict[str, Any]]) -> tuple[str, str]:
    """``(prompt, prompt + response)`` of one row's converted examples (system messages left out).

    ``messages``: the prompt is every message before the last assistant message; ``text``: the
    text is the prompt; otherwise ``prompt`` and the ``completion`` / ``chosen`` / ``rejected``
    answers of all the row's examples (a pair's two unpaired rows give both answers).
    """
    first = examples[0]
    if "messages" in first:
        msgs = [m for m in first["messages"] if m.get("role") != "system"]
        cut = len(msgs) - 1 if msgs and msgs[-1].get("role") == "assistant" else len(msgs)
        prompt, answers = _content(msgs[:cut]), [_content(msgs[cut:])]
    elif "text" in first:
        prompt, answers = _content(first["text"]), []
    else:
        prompt = _content(first.get("prompt"))
        answers = [_content(ex[k]) for ex in examples for k in ("completion", "chosen", "rejected") if k in ex]
    return prompt, "\n".join([prompt, *dict.fromkeys(answers)])


def _quote(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "…")


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------

def check_pii(split: str, converted: dict[int, Optional[list]], where: Callable[[int], str], opts: Any,
              report: DataReport) -> None:
    """Find PII in the user and assistant messages of ``converted`` rows; mask or drop them in place.

    ``converted`` maps a row index to its examples (``None``: an invalid row); a dropped row becomes ``None``.
    """
    from sllmx.data.pii import mask_pii

    by_type: Counter[str] = Counter()
    rows, dropped, examples = 0, 0, []

    def visit(value: Any, found: Counter) -> Any:
        if isinstance(value, str):
            masked, counts = mask_pii(value)
            found.update(counts)
            return masked
        if isinstance(value, list):
            return [visit(v, found) for v in value]
        if isinstance(value, dict):
            if value.get("role") == "system":
                return value
            return {k: visit(v, found) if k == "content" else v for k, v in value.items()}
        return value

    for i, exs in converted.items():
        if not exs:
            continue
        found: Counter[str] = Counter()
        masked = [{k: (visit(v, found) if k != "label" else v) for k, v in ex.items()} for ex in exs]
        if not found:
            continue
        rows += 1
        by_type.update(found)
        if len(examples) < EXAMPLES:
            examples.append(f"{where(i)}: {', '.join(sorted(found))}")
        if opts.pii == "mask":
            converted[i] = masked
        elif opts.pii == "drop":
            converted[i] = None
            dropped += 1
    report.pii[split] = {"rows": rows, "by_type": dict(sorted(by_type.items())), "action": opts.pii,
                         "dropped": dropped, "examples": examples}
    if rows and opts.pii == "report":
        report.warn(f"{split}: {rows} rows contain personal information ({', '.join(sorted(by_type))}), e.g. "
                    f"{examples[0]}; data.pii=mask replaces it with typed placeholders, data.pii=drop drops the rows")


def check_duplicates(split: str, texts: dict[int, tuple[str, str]], where: Callable[[int], str],
                     opts: Any, report: DataReport) -> tuple[set[int], list]:
    """Count exact and near duplicates within one split.

    Returns:
        ``(drop, pairs)``: the rows to drop (with ``data.duplicates=drop``: each duplicate of prompt +
        response after the first of its group; else none) and every duplicate
        :class:`~sllmx.data.dedup.Pair` found, by prompt + response and by prompt, in row indices.
    """
    from sllmx.data.dedup import Pair, find_duplicates

    ids = sorted(texts)
    found: list[Pair] = []
    result: dict[str, Any] = {"action": opts.duplicates}
    drop: set[int] = set()
    examples = []
    for k, key in enumerate(KEYS):
        pairs = find_duplicates([texts[i][1 - k] for i in ids], opts.near_dup_threshold)
        found += [Pair(ids[p.first], ids[p.dup], p.kind, p.similarity) for p in pairs]
        suffix = "" if key == "full" else "_prompt"
        result["exact" + suffix] = sum(p.kind == "exact" for p in pairs)
        result["near" + suffix] = sum(p.kind == "near" for p in pairs)
        if key == "full":
            drop = {ids[p.dup] for p in pairs}
            for p in pairs[:EXAMPLES]:
                first = where(ids[p.first]).rsplit(", ", 1)[-1]  # the same file: its position alone
                examples.append(f"{where(ids[p.dup])} repeats {first} ({p.kind}"
                                + (f", Jaccard {p.similarity:.2f}" if p.kind == "near" else "")
                                + f"): {_quote(texts[ids[p.dup]][0])}")
    result["dropped"] = len(drop) if opts.duplicates == "drop" else 0
    result["examples"] = examples
    report.duplicates[split] = result
    return (drop if opts.duplicates == "drop" else set()), found


def duplicate_groups(rows: list[int], texts: dict[int, tuple[str, str]], opts: Any,
                     pairs: Optional[list] = None) -> list[list[int]]:
    """Groups of ``rows`` linked by an exact or near duplicate, by prompt or by prompt + response
    (``pairs`` when :func:`check_duplicates` found them already); the hold-out keeps each group in
    one split.  Each group is sorted; the groups are ordered by first row."""
    from sllmx.data.dedup import Pair, clusters, find_duplicates

    if pairs is None:
        ids = sorted(texts)
        pairs = [Pair(ids[p.first], ids[p.dup], p.kind, p.similarity)
                 for k in (0, 1) for p in find_duplicates([texts[i][k] for i in ids], opts.near_dup_threshold)]
    pos = {r: j for j, r in enumerate(rows)}
    local = [Pair(pos[p.first], pos[p.dup], p.kind, p.similarity) for p in pairs if p.first in pos and p.dup in pos]
    return [[rows[j] for j in g] for g in clusters(len(rows), local)]


def check_leakage(plan: dict[str, list[int]], texts: dict[str, dict[int, tuple[str, str]]],
                  where: dict[str, Callable[[int], str]], opts: Any, report: DataReport) -> dict[str, set]:
    """Rows shared between the final splits, by prompt and by prompt + response (exact or near).

    Args:
        plan: ``{split: [row index, ...]}``; ``texts[split][i]`` the row's ``(prompt, full)``
            (rows of held-out splits are indexed in the train file, so ``texts`` is per split).

    Returns:
        ``{split: rows to drop}`` (``data.leakage=drop``: train rows shared with dev or test, and dev
        rows shared with test); empty otherwise.

    Raises:
        SllmxError: with ``data.leakage=error`` when any row is shared: counts and example lines.
    """
    from sllmx.data.dedup import find_shared

    drop: dict[str, set] = {name: set() for name in plan}
    found: list[str] = []
    pairs_out: dict[str, Any] = {}
    for held, other in (("dev", "train"), ("test", "train"), ("test", "dev")):
        if held not in plan or other not in plan:
            continue
        left, right = plan[held], plan[other]
        result: dict[str, Any] = {}
        examples: list[str] = []
        shared: set[int] = set()
        shown: set[int] = set()
        for k, key in enumerate(KEYS):
            pairs = find_shared([texts[held][i][1 - k] for i in left], [texts[other][j][1 - k] for j in right],
                                opts.near_dup_threshold)
            suffix = "" if key == "full" else "_prompt"
            result["exact" + suffix] = sum(p.kind == "exact" for p in pairs)
            result["near" + suffix] = sum(p.kind == "near" for p in pairs)
            shared |= {right[p.dup] for p in pairs}
            for p in pairs:
                if len(examples) < EXAMPLES and right[p.dup] not in shown:
                    shown.add(right[p.dup])
                    examples.append(f"{other} {where[other](right[p.dup])} ~ {held} {where[held](left[p.first])} "
                                    f"({'prompt' if k else 'prompt + response'}, {p.kind}"
                                    + (f", Jaccard {p.similarity:.2f}" if p.kind == "near" else "")
                                    + f"): {_quote(texts[other][right[p.dup]][0])}")
        result["examples"] = examples
        pairs_out[f"{other}-{held}"] = result
        if shared:
            found.append(f"{other}-{held}: {len(shared)} rows (exact {result['exact']}, near {result['near']}; by "
                         f"prompt: exact {result['exact_prompt']}, near {result['near_prompt']})")
            drop[other] |= shared
    dropped = sum(len(v) for v in drop.values()) if opts.leakage == "drop" else 0
    report.leakage = {"pairs": pairs_out, "action": opts.leakage, "dropped": dropped,
                      "from": ", ".join(f"{k} {len(v)}" for k, v in drop.items() if v) if dropped else ""}
    if found and opts.leakage == "error":
        lines = [e for d in pairs_out.values() for e in d["examples"]][:EXAMPLES]
        raise SllmxError("data leakage between splits: " + "; ".join(found) + ". For example: " + "; ".join(lines)
                         + ". data.leakage=drop removes these rows from train (and dev rows shared with test "
                           "from dev); data.leakage=report only reports them")
    if found and opts.leakage == "report":
        report.warn("data leakage between splits: " + "; ".join(found))
    return drop if opts.leakage == "drop" else {name: set() for name in plan}


def label_balance(rows: dict[str, list[dict]], plan: dict[str, tuple[str, list[int]]], opts: Any,
                  report: DataReport) -> None:
    """Value counts of the label column per final split (``plan[split] = (source split, row indices)``)."""
    column = opts.label_column or opts.stratify
    if column is None:
        column = next((c for c in LABEL_COLUMNS if rows["train"] and c in rows["train"][0]), None)
    if column is None:
        return
    report.labels = {"column": column}
    for split, (source, indices) in sorted(plan.items(), key=lambda kv: ("train", "dev", "test").index(kv[0])):
        counts = Counter(str(rows[source][i].get(column)) for i in indices)
        report.labels[split] = dict(sorted(counts.items()))


