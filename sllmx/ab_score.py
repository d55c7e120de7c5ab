"""Scoring a blind A/B study (``python -m sllmx.abtest score``): the unblinding key, the judges' CSV files (the
page's ``judgments-<judge>.csv`` or a filled ``items.csv``), one outcome per item, and the summary: every pair's
counts and win rate, the judges' agreement, the Bradley–Terry ranking (the statistics: :mod:`sllmx.ab_stats`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from sllmx.errors import SllmxError

KEY_FORMAT = "sllmx.abtest key"
KEY_VERSION = 1
#: what a judgment may say in a CSV, normalised (lower case, spaces and hyphens as ``_``) → the label
JUDGMENT_WORDS = {
    "a": "A", "b": "B", "tie": "tie", "both_bad": "both_bad", "bothbad": "both_bad",
    "a_is_better": "A", "b_is_better": "B",
    "a가_더_좋음": "A", "b가_더_좋음": "B", "비슷함": "tie", "동점": "tie", "무승부": "tie",
    "둘_다_나쁨": "both_bad", "둘다_나쁨": "both_bad", "둘다나쁨": "both_bad",
}


def read_key(path: Path) -> dict[str, Any]:
    """A key written by ``export``; one-line errors otherwise."""
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SllmxError(f"{path}: no such key file (pass --key where export wrote it)") from None
    except (OSError, ValueError) as exc:
        raise SllmxError(f"{path}: not a readable key ({type(exc).__name__}: {exc})") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise SllmxError(f"{path}: not an sllmx.abtest key")
    if key.get("version") != KEY_VERSION:
        raise SllmxError(f"{path}: key version {key.get('version')!r}; this sllmx reads version {KEY_VERSION}")
    return key


def _label(value: str) -> Optional[str]:
    word = "_".join(value.strip().replace("-", " ").split()).lower()
    return JUDGMENT_WORDS.get(word)


def read_judgments(path: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """The judgments in a page's CSV or a filled ``items.csv``: ``{"item", "judgment", "judge", "comment",
    "where"}``; rows with an empty judgment are skipped.  The judge is the ``judge`` column, or the file's
    name without ``.csv`` where that is absent or empty.

    Raises:
        SllmxError: naming the file, line and field: an unknown item, a judgment other than A, B, tie or
            both_bad (any case; the page's English and Korean labels too), another export's file.
    """
    raw = None
    for encoding in ("utf-8-sig", "cp949"):  # Excel in Korean saves "CSV" as CP949
        try:
            raw = path.read_bytes().decode(encoding)
            break
        except UnicodeDecodeError:
            continue
        except OSError as exc:
            raise SllmxError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if raw is None:
        raise SllmxError(f"{path}: not UTF-8 (or CP949) text; save it as CSV UTF-8")
    reader = csv.reader(raw.splitlines(keepends=True))
    header = [h.strip().lower() for h in next(reader, [])]
    if "item" not in header or "judgment" not in header:
        raise SllmxError(f"{path}: line 1: no item and judgment columns (the page's judgments CSV or the "
                         "export's items.csv is expected)")
    col = {name: header.index(name) for name in ("item", "judgment", "judge", "comment", "export") if name in header}
    out, start = [], reader.line_num + 1
    for values in reader:
        where, start = f"{path}: line {start}", reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        get = lambda name: values[col[name]].strip() if name in col and col[name] < len(values) else ""  # noqa: E731
        if get("export") and get("export") != key["export_id"]:
            raise SllmxError(f"{where}: field export: {get('export')!r} is another export's (this key's is "
                             f"{key['export_id']!r})")
        item = get("item")
        if not item.isascii() or not item.isdigit() or not 1 <= int(item) <= key["n"]:
            raise SllmxError(f"{where}: field item: {item!r} is not an item of this export (1 to {key['n']})")
        text = get("judgment")
        if not text:
            continue
        label = _label(text)
        if label is None:
            raise SllmxError(f"{where}: field judgment: {text!r}; use A, B, tie or both_bad")
        out.append({"item": int(item), "judgment": label, "judge": get("judge") or path.stem,
                    "comment": get("comment"), "where": where})
    return out


def score(key: dict[str, Any], judgments: list[dict[str, Any]], seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Unblind the judgments and compute the study's statistics (:mod:`sllmx.ab_stats`).

    Each item has one outcome: its judges' majority label (:func:`sllmx.ab_stats.majority`).  Every pair of
    systems gets its counts and win rate; with several judges their agreement; with more than two systems the
    Bradley–Terry ranking (bootstrap seeded with ``seed``, ``n_boot`` resamples).

    Raises:
        SllmxError: when no judgment is given, or a judge judged an item twice.
    """
    from sllmx.ab_stats import agreement, bradley_terry, majority, win_rate

    if not judgments:
        raise SllmxError("no judgments in the given files (every judgment field is empty)")
    systems = key["systems"]
    index = {s["id"]: k for k, s in enumerate(systems)}
    items = {it["item"]: it for it in key["items"]}
    seen: dict[tuple[str, int], str] = {}
    by_item: dict[int, dict[str, str]] = {}
    for j in judgments:
        if (j["judge"], j["item"]) in seen:
            raise SllmxError(f"{j['where']}: item {j['item']} judged twice by {j['judge']!r} (first at "
                             f"{seen[j['judge'], j['item']]}); pass each judge's judgments once (without a judge "
                             "column the judge is the file's name)")
        seen[j["judge"], j["item"]] = j["where"]
        by_item.setdefault(j["item"], {})[j["judge"]] = j["judgment"]
    judges = sorted({j["judge"] for j in judgments})

    def outcome(item: int, label: str) -> tuple[int, int, str]:
        """(lower system, higher system, what happened to the lower one: win / loss / tie / both_bad)."""
        a, b = index[items[item]["A"]], index[items[item]["B"]]
        s, t = min(a, b), max(a, b)
        if label in ("tie", "both_bad"):
            return s, t, label
        winner = a if label == "A" else b
        return s, t, "win" if winner == s else "loss"

    def tally(labels: dict[int, str]) -> list[dict[str, Any]]:
        counts: dict[tuple[int, int], dict[str, int]] = {}
        for item, label in labels.items():
            s, t, what = outcome(item, label)
            c = counts.setdefault((s, t), {"win": 0, "loss": 0, "tie": 0, "both_bad": 0})
            c[what] += 1
        return [{"first": systems[s]["id"], "second": systems[t]["id"],
                 **win_rate(c["win"], c["loss"], c["tie"], c["both_bad"])}
                for (s, t), c in sorted(counts.items())]

    decided = {item: majority(list(votes.values())) for item, votes in sorted(by_item.items())}
    result: dict[str, Any] = {
        "export_id": key["export_id"], "split": key["split"], "seed": key["seed"], "items": key["n"],
        "systems": [{k: s.get(k) for k in ("id", "run", "method", "trainer", "file")} for s in systems],
        "judges": judges, "judgments": len(judgments), "items_judged": len(decided),
        "items_not_judged": key["n"] - len(decided), "pairs": tally(decided),
        "per_judge": {judge: tally({item: v[judge] for item, v in by_item.items() if judge in v})
                      for judge in judges} if len(judges) > 1 else {},
        "agreement": None, "bradley_terry": None,
    }
    if len(judges) > 1:
        common = [item for item, votes in sorted(by_item.items()) if len(votes) == len(judges)]
        result["agreement"] = agreement([[by_item[item][judge] for judge in judges] for item in common],
                                        judges=len(judges))
    if len(systems) > 2:
        outcomes = []
        for item, label in decided.items():
            s, t, what = outcome(item, label)
            outcomes.append((s, t, {"win": 1.0, "loss": 0.0}.get(what, 0.5)))
        ranking = bradley_terry(len(systems), outcomes, seed=seed, n_boot=n_boot)
        for row in ranking:
            row["system"] = systems[row["system"]]["id"]
        result["bradley_terry"] = {"ranking": ranking, "bootstrap": n_boot, "seed": seed}
    return result


def _num(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The summary :func:`score` computed, as Markdown (numbers as numbers)."""
    names = {s["id"]: f"{s['method']} × {s['trainer']}" for s in result["systems"]}
    lines = [f"Blind A/B study {result['export_id']}: {result['items']} items ({result['split']} split, seed "
             f"{result['seed']}), {result['items_judged']} judged, {result['items_not_judged']} not judged; "
             f"{len(result['judges'])} judge(s) ({', '.join(result['judges'])}), {result['judgments']} judgments",
             ""]
    lines += [f"- {s['id']}: {names[s['id']]} ({s['run']})" for s in result["systems"]]
    lines += ["", "| pair | first better | second better | tie | both bad | first's win rate (decided) | "
              "95% Wilson CI | sign test p | first's win rate, ties as ½ |", "|---|---|---|---|---|---|---|---|---|"]
    for p in result["pairs"]:
        lines.append(f"| {p['first']} vs {p['second']} | {p['wins']} | {p['losses']} | {p['ties']} | "
                     f"{p['both_bad']} | {_num(p['win_rate'])} ({p['wins']}/{p['decided']}) | "
                     f"{_num(p['ci_low'])} to {_num(p['ci_high'])} | "
                     f"{'–' if p['sign_test_p'] is None else format(p['sign_test_p'], '.3g')} | "
                     f"{_num(p['win_rate_ties_half'])} |")
    lines += ["", "One outcome per item: its judges' majority (a split vote is a tie). The win rate is over the "
              "decided items; ties and both bad are left out of it and of the two-sided sign test (exact "
              "binomial against 1/2), and counted as half a win for each side in the last column."]
    if result["per_judge"]:
        lines += ["", "Each judge's own counts (first better – second better, ties, both bad):"]
    for judge, pairs in result["per_judge"].items():
        lines.append(f"- {judge}: " + "; ".join(
            f"{p['first']} vs {p['second']} {p['wins']}–{p['losses']}, {p['ties']} tie, {p['both_bad']} both bad"
            for p in pairs))
    a = result["agreement"]
    if a is not None:
        value = (f"{a['kappa']:.3f}" + (f" (95% CI {a['ci_low']:.3f} to {a['ci_high']:.3f})"
                                        if a["ci_low"] is not None else "")) if a["kappa"] is not None \
            else f"not defined: {a['reason']}"
        observed = f", raw agreement {a['observed']:.3f}" if a["observed"] is not None else ""
        lines += ["", f"Agreement of the {a['judges']} judges on the {a['items']} items they all judged "
                      f"(labels A / B / tie / both bad as judged): {a['method']} {value}{observed}"]
    bt = result["bradley_terry"]
    if bt is not None:
        lines += ["", f"Bradley–Terry ranking (log-strength θ, mean 0; 95% intervals from {bt['bootstrap']} "
                      "bootstrap resamples of the items; a tie or both bad is half a win for each side):", "",
                  "| rank | system | θ | 95% CI | rank 95% CI | wins | ties | losses |", "|---|---|---|---|---|---|---|---|"]
        for r in bt["ranking"]:
            rank_ci = "–" if r["rank_low"] is None else f"{r['rank_low']} to {r['rank_high']}"
            lines.append(f"| {r['rank']} | {r['system']} {names[r['system']]} | {r['theta']:+.3f} | "
                         f"{_num(r['theta_low'])} to {_num(r['theta_high'])} | {rank_ci} | {r['wins']} | "
                         f"{r['ties']} | {r['losses']} |")
    return "\n".join(lines) + "\n"
