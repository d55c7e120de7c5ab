"""``python -m sllmx.abtest``: a blind pairwise A/B evaluation of the answers of two or more runs by people.

``export RUN_A RUN_B [RUN_C ...]`` samples ``--n`` examples that every run answered (the test split's
``generations-test.jsonl`` when every run has one, else the dev split's, as ``python -m sllmx.report`` pairs
them), pairs two systems per item (with more than two, the pairs of systems in turn, shuffled), shuffles left
and right, and writes ``index.html`` (one self-contained page for the judges), ``items.csv`` (the same items
for a spreadsheet) and ``key.json`` (the unblinding key: keep it away from the judges; ``--key`` puts it
elsewhere).  The same runs, ``--n`` and ``--seed`` give the same files, byte for byte.

``score DIR JUDGMENTS.csv...`` unblinds the judgments with the key and prints the win / tie / loss counts of
every pair of systems, the win rate among decided items with its 95% Wilson interval and the sign test, the
judges' agreement (Cohen's or Fleiss' kappa) and, with more than two systems, a Bradley–Terry ranking with
bootstrap intervals (:mod:`sllmx.ab_score`, :mod:`sllmx.ab_stats`).

``judge DIR MODEL...`` lets a local model (a run or model folder, or ``model=...`` overrides) judge the items of
an export in both orders and writes ``judgments-<name>.csv`` in the page's format (:mod:`sllmx.ab_judge`): a
demonstration with a small model, whose agreement with people ``score`` reports.  docs/abtest.md has the whole
procedure.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Optional

from sllmx.ab_score import KEY_FORMAT, KEY_VERSION, markdown, read_judgments, read_key, score
from sllmx.errors import OneLineParser, SllmxError, exit_with


# -- export -------------------------------------------------------------------------------------------------------

def _question(messages: Any, where: str) -> str:
    """The last user message of a row's ``input`` (chat messages), or the input itself when it is a string."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # content parts: keep the text ones
                    content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                if isinstance(content, str):
                    return content
    raise SllmxError(f"{where}: field input: no user message (expected a list of chat messages)")


def read_generations(path: Path) -> list[dict[str, Any]]:
    """A generation file's rows as ``{"question", "reference", "prediction"}``.

    Raises:
        SllmxError: naming the file, line and field of a row that is not JSON or lacks an answer.
    """
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SllmxError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SllmxError(f"{where}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise SllmxError(f"{where}: not a JSON object")
        if not isinstance(row.get("prediction"), str):
            raise SllmxError(f"{where}: field prediction: no generated answer (a file of generations is needed, "
                             "not of log-probabilities)")
        rows.append({"question": _question(row.get("input"), where), "reference": row.get("reference"),
                     "prediction": row["prediction"]})
    if not rows:
        raise SllmxError(f"{path}: no rows")
    return rows


def _systems(runs: list[str], split: Optional[str]) -> tuple[str, list[dict[str, Any]], list[list[dict]]]:
    """The split, each run's description and its generation rows, checked to pair row by row."""
    from sllmx.comparison import DEV_GENERATIONS, TEST_GENERATIONS, method_label
    from sllmx.records import RUN_FILE, RunRecord

    folders = []
    for raw in runs:
        folder = Path(raw)
        folder = folder.parent if folder.name == RUN_FILE else folder
        if not (folder / RUN_FILE).is_file():
            raise SllmxError(f"{raw}: not a run folder (no {RUN_FILE} in it)")
        if folder.resolve() in [f.resolve() for f in folders]:
            raise SllmxError(f"{raw}: given twice; name each run once")
        folders.append(folder)
    if split is None:  # the report's rule: test where every run has it, else dev
        split = "test" if all((f / TEST_GENERATIONS).is_file() for f in folders) else "dev"
    names = [TEST_GENERATIONS] if split == "test" else list(DEV_GENERATIONS)
    systems, tables = [], []
    for number, (raw, folder) in enumerate(zip(runs, folders), start=1):
        try:
            record = RunRecord.read(folder)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise SllmxError(f"{folder / RUN_FILE}: not a readable run record ({type(exc).__name__}: {exc})") from None
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None:
            raise SllmxError(f"{folder}: no {' or '.join(names)} (the {split} split's answers)"
                             + ("; run with eval.test=true, or pass --split dev" if split == "test" else ""))
        if record.status != "COMPLETE":
            print(f"sllmx.abtest: warning: {folder} has status {record.status}", file=sys.stderr)
        tables.append(read_generations(path))
        systems.append({"id": f"S{number}", "run": raw, "path": str(folder.resolve()), "file": path.name,
                        "method": method_label(record), "trainer": record.trainer, "seed": record.seed,
                        "baseline": record.baseline, "prompting": (record.prompting or {}).get("kind")})
    first = tables[0]
    for system, rows in zip(systems[1:], tables[1:]):
        if len(rows) != len(first):
            raise SllmxError(f"not paired: {Path(systems[0]['run']) / systems[0]['file']} has {len(first)} rows, "
                             f"{Path(system['run']) / system['file']} {len(rows)}")
        for n, (a, b) in enumerate(zip(first, rows), start=1):
            if a["reference"] != b["reference"]:
                raise SllmxError(f"not paired: the references differ at row {n} of "
                                 f"{Path(systems[0]['run']) / systems[0]['file']} and "
                                 f"{Path(system['run']) / system['file']}")
    return split, systems, tables


def build_export(runs: list[str], n: int = 100, seed: int = 0, split: Optional[str] = None,
                 show_reference: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The key and the judges' items of a study (nothing written).

    ``n`` rows are drawn without replacement (all when fewer) with ``numpy.random.default_rng(seed)``, in the
    order drawn; with more than two systems every item gets the next pair of systems from rounds of all
    pairs, each round shuffled; then A/B is a shuffled, balanced list of sides (half the items have the first
    system of their pair on the left).  The question shown is the last user message of a run whose prompts
    are the data's own or few-shot (a RAG prompt also holds passages).
    """
    import itertools

    import numpy as np

    if len(runs) < 2:
        raise SllmxError("export needs at least two runs to compare")
    if n < 1:
        raise SllmxError(f"--n {n}: must be >= 1")
    if seed < 0:
        raise SllmxError(f"--seed {seed}: must be >= 0")
    split, systems, tables = _systems(runs, split)
    rng = np.random.default_rng(seed)
    total = len(tables[0])
    rows = [int(r) for r in rng.choice(total, size=min(n, total), replace=False)]
    all_pairs = list(itertools.combinations(range(len(systems)), 2))
    pairs: list[tuple[int, int]] = []
    while len(pairs) < len(rows):
        pairs += [all_pairs[k] for k in rng.permutation(len(all_pairs))]
    flips = rng.permutation(np.arange(len(rows)) % 2)
    shown = next((k for k, s in enumerate(systems) if "rag" not in str(s["prompting"] or "")), 0)
    key_items, items = [], []
    for number, (row, (s, t), flip) in enumerate(zip(rows, pairs, flips), start=1):
        a, b = (t, s) if flip else (s, t)
        key_items.append({"item": number, "row": row, "A": systems[a]["id"], "B": systems[b]["id"]})
        items.append({"item": number, "question": tables[shown][row]["question"],
                      "reference": tables[0][row]["reference"] if show_reference else None,
                      "answer_A": tables[a][row]["prediction"], "answer_B": tables[b][row]["prediction"]})
    content = json.dumps({"seed": seed, "split": split, "systems": systems, "items": key_items, "shown": items},
                         sort_keys=True, ensure_ascii=False, default=str)
    key = {"format": KEY_FORMAT, "version": KEY_VERSION,
           "export_id": hashlib.sha256(content.encode("utf-8")).hexdigest()[:12],
           "note": "the unblinding key: keep it away from the judges", "seed": seed, "split": split,
           "n": len(key_items), "rows": total, "show_reference": show_reference,
           "systems": systems, "items": key_items}
    for it in items:
        if it["reference"] is not None and not isinstance(it["reference"], str):
            it["reference"] = json.dumps(it["reference"], ensure_ascii=False)
    return key, items


def export(runs: list[str], out: Optional[str], key_path: Optional[str], n: int, seed: int, split: Optional[str],
           lang: str, show_reference: bool) -> tuple[Path, Path]:
    """Write ``index.html``, ``items.csv`` and the key; return the folder and the key's path.

    Raises:
        SllmxError: on bad runs (see :func:`build_export`) or when one of the files exists.
    """
    from sllmx.ab_page import render_items_csv, render_page
    from sllmx.atomic import write_json_atomic, write_text_atomic

    key, items = build_export(runs, n=n, seed=seed, split=split, show_reference=show_reference)
    folder = Path(out) if out else Path(f"abtest-{key['export_id']}")
    key_file = Path(key_path) if key_path else folder / "key.json"
    targets = [folder / "index.html", folder / "items.csv", key_file]
    for target in targets:
        if target.exists():
            raise SllmxError(f"{target}: the file exists; nothing is overwritten (choose another --out)")
    try:
        write_text_atomic(targets[0], render_page(items, key["export_id"], lang))
        write_text_atomic(targets[1], render_items_csv(items, key["export_id"]))
        write_json_atomic(key_file, key)
    except OSError as exc:
        raise SllmxError(f"{exc.filename or folder}: cannot be written ({exc.strerror or exc})") from None
    return folder, key_file


# -- the command line ---------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    prog = "python -m sllmx.abtest"
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{export,score,judge}")
    ex = commands.add_parser("export", prog=f"{prog} export", help="write the judges' page, items.csv and the key")
    ex.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders answered on the same data")
    ex.add_argument("--n", type=int, default=100, help="items to draw (default 100; all rows when fewer)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the draw, the pairs and the sides (default 0)")
    ex.add_argument("--split", choices=["test", "dev"], help="default: test where every run has it, else dev")
    ex.add_argument("--out", help="the folder to write (default abtest-<export id>); existing files are refused")
    ex.add_argument("--key", help="where to write the unblinding key (default OUT/key.json)")
    ex.add_argument("--lang", choices=["en", "ko"], default="en", help="the page's first language (a toggle on it)")
    ex.add_argument("--show-reference", action="store_true", help="show the reference answer beside the question")
    ju = commands.add_parser("judge", prog=f"{prog} judge",
                             help="a local model judges the export's items in both orders (a demonstration)")
    ju.add_argument("folder", metavar="DIR", help="the export folder (its items.csv)")
    ju.add_argument("model", nargs="+", metavar="MODEL",
                    help="a run or model folder, or python -m sllmx overrides naming a model (model=smollm2-135m)")
    ju.add_argument("--name", default="model-judge", help="the judge's name in the CSV (default model-judge)")
    ju.add_argument("--batch-size", type=int, default=8)
    sc = commands.add_parser("score", prog=f"{prog} score", help="unblind judgments and print the statistics")
    sc.add_argument("folder", metavar="DIR", help="the export folder (its key.json unless --key)")
    sc.add_argument("judgments", nargs="+", metavar="CSV", help="judgments-<judge>.csv files or filled items.csv")
    sc.add_argument("--key", help="the key file (default DIR/key.json)")
    sc.add_argument("--format", choices=["markdown", "json"], default="markdown")
    sc.add_argument("--seed", type=int, default=0, help="seed of the Bradley–Terry bootstrap (default 0)")
    sc.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            folder, key_file = export(args.runs, args.out, args.key, args.n, args.seed, args.split, args.lang,
                                      args.show_reference)
            print(f"wrote {folder / 'index.html'} and {folder / 'items.csv'} for the judges, and the key "
                  f"{key_file} (keep it away from the judges)")
        elif args.command == "judge":
            import re

            from sllmx.ab_judge import judge
            from sllmx.chat import find_target, load_chatter

            if args.batch_size < 1:
                raise SllmxError(f"--batch-size {args.batch_size}: must be >= 1")
            if not re.fullmatch(r"[\w-][\w.-]*", args.name):
                raise SllmxError(f"--name {args.name!r}: letters, digits, '_', '-' and '.' only (it names a file)")
            folder = Path(args.folder)
            if not (folder / "items.csv").is_file():
                raise SllmxError(f"{folder / 'items.csv'}: not found; give an export folder")
            paths = [m for m in args.model if "=" not in m]
            target = find_target(paths, [m for m in args.model if "=" in m])
            chatter = load_chatter(target)
            written = judge(chatter.model, chatter.tokenizer, folder, args.name, batch_size=args.batch_size)
            print(f"wrote {written}: score it with the people's files to see the agreement")
        else:
            if args.bootstrap < 0:
                raise SllmxError(f"--bootstrap {args.bootstrap}: must be >= 0")
            if args.seed < 0:
                raise SllmxError(f"--seed {args.seed}: must be >= 0")
            key = read_key(Path(args.key) if args.key else Path(args.folder) / "key.json")
            judgments = [j for name in args.judgments for j in read_judgments(Path(name), key)]
            result = score(key, judgments, seed=args.seed, n_boot=args.bootstrap)
            if args.format == "json":
                print(json.dumps(result, indent=2, ensure_ascii=False))
            else:
                sys.stdout.write(markdown(result))
    except SllmxError as exc:
        exit_with(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
