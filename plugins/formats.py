"""Built-in data source ``files`` and the built-in row formats.

Registered through the ``sllmx`` entry-point group (``formats = "sllmx_plugins.formats"``)
like any third-party plugin.  This module is imported at CLI start-up, so ``datasets`` and
``pyarrow`` are imported only inside the functions that need them.

Source
    ``files`` (:class:`FilesSource`, config :class:`FilesDataConfig`): local ``.jsonl``,
    ``.jsonl.gz``, ``.json`` (a list of objects), ``.csv`` (header row, UTF-8 with or without
    BOM) and ``.parquet`` files, or a Hugging Face ``datasets`` id when ``path`` is not a local
    path.

Formats (``data.format=<name>``; every conversation comes out in TRL's conversational form,
lists of ``{"role", "content"}`` messages — https://huggingface.co/docs/trl/dataset_formats):

=====================  ==========================================  ===================================
name                   required columns                            layouts (preferred first)
=====================  ==========================================  ===================================
messages               messages [{role, content}]                  messages, prompt/completion
alpaca                 instruction, output (input optional)        prompt/completion
prompt_completion      prompt, completion (strings or messages)    prompt/completion
preference             prompt, chosen, rejected                    preference, unpaired, prompt/completion
sharegpt_preference    conversations [{from, value}], chosen,      preference, unpaired, prompt/completion
                       rejected ({from, value}; LLaMA-Factory)
kto                    prompt, completion, label                   unpaired
kto_messages           messages, label (LLaMA-Factory)             unpaired
text                   text                                        text
hh_rlhf                chosen, rejected (Anthropic HH transcripts) preference, unpaired, prompt/completion
summarization          dialogue (or document), summary (or         prompt/completion
                       summary1: DialogSum's test file)
=====================  ==========================================  ===================================

The ``unpaired`` layout of a pair is two rows, the chosen answer with ``label=True`` then the
rejected one with ``label=False`` — what TRL's ``unpair_preference_dataset`` produces.  The
``prompt/completion`` layout of a pair keeps the chosen answer (SFT on preference data).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.config import DataConfig, _help
from sllmx.errors import SllmxError
from sllmx.interfaces import (
    LAYOUT_MESSAGES,
    LAYOUT_PREFERENCE,
    LAYOUT_PROMPT_COMPLETION,
    LAYOUT_TEXT,
    LAYOUT_UNPAIRED,
    DataFormat,
    DataSource,
    FieldError,
    RawSplit,
)

# ---------------------------------------------------------------------------
# The ``files`` source
# ---------------------------------------------------------------------------

#: file suffixes the ``files`` source reads
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


@dataclass
class FilesDataConfig(DataConfig):
    """Rows from local files (JSONL, JSON, CSV, Parquet) or a Hugging Face ``datasets`` id."""

    source: str = _help("data source plugin that reads or generates the rows", "files")
    path: str = _help("train file (.jsonl, .jsonl.gz, .json, .csv, .parquet), or a Hugging Face datasets id "
                      "when it is not a local path")
    dev: Optional[str] = _help("dev file; null: hold out data.dev_fraction of train (seeded)", None)
    test: Optional[str] = _help("test file; null: hold out data.test_fraction of train (seeded)", None)
    hub_split: str = _help("split to load when path is a datasets id", "train")
    hub_name: Optional[str] = _help("configuration (subset) name when path is a datasets id", None)
    sample_seed: Optional[int] = _help(
        "with max_rows: take a seeded random sample of N rows instead of the first N "
        "(for files sorted by topic or label); null keeps the first N", None, ge=0)



def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for a dataclass, an OmegaConf node or a namespace; ``default`` when absent."""
    try:
        value = getattr(cfg, key)
    except Exception:  # AttributeError, omegaconf's ConfigAttributeError / MissingMandatoryValue
        return default
    return default if value == "???" else value


class FilesSource(DataSource):
    """Rows from local JSONL / JSON / CSV / Parquet files, or a Hugging Face datasets id."""

    name = "files"
    config = FilesDataConfig

    def load(self, cfg: Any) -> dict[str, Optional[RawSplit]]:
        """Read ``cfg.path`` (and ``cfg.dev`` / ``cfg.test`` when set).

        Returns:
            ``{"train": RawSplit, "dev": RawSplit | None, "test": RawSplit | None}``; each split
            keeps at most ``cfg.max_rows`` rows (the first ones, or a sample seeded by
            ``cfg.sample_seed``).  ``line_of`` gives ``line N`` (JSONL), ``row N (line M)``
            (CSV, header at line 1), ``item N`` (JSON array) or ``row N`` (Parquet, hub).

        Raises:
            SllmxError: ``path`` not set; a missing, unreadable or malformed file (naming the
                file, and the line where it applies); a hub dataset that cannot be loaded.
        """
        path = _opt(cfg, "path")
        if not path:
            raise SllmxError("data.path is not set: give data.path=FILE (.jsonl, .json, .csv, .parquet) "
                             "or a Hugging Face datasets id")
        limit = _opt(cfg, "max_rows")
        seed = _opt(cfg, "sample_seed")
        out: dict[str, Optional[RawSplit]] = {"train": None, "dev": None, "test": None}
        if _is_local(str(path)):
            out["train"] = read_file(str(path), limit, seed)
        else:
            out["train"] = read_hub(str(path), _opt(cfg, "hub_name"), _opt(cfg, "hub_split", "train") or "train",
                                    limit, seed)
        for split in ("dev", "test"):
            other = _opt(cfg, split)
            if other:
                out[split] = read_file(str(other), limit, seed)
        return out


def _is_local(path: str) -> bool:
    """True when ``path`` names a local file (existing, or shaped like a path rather than a hub id)."""
    if os.path.exists(os.path.expanduser(path)):
        return True
    lowered = path.lower()
    return (lowered.endswith(FILE_SUFFIXES + (".gz",))
            or path.startswith(("/", ".", "~"))
            or path.count("/") >= 2
            or "\\" in path)


def _limit(rows: list[dict], where: list[Any], limit: Optional[int], seed: Optional[int]) -> tuple[list, list]:
    if limit is None or limit < 0 or len(rows) <= limit:
        return rows, where
    if seed is None:
        return rows[:limit], where[:limit]
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep], [where[i] for i in keep]


def read_file(path: str, limit: Optional[int] = None, sample_seed: Optional[int] = None) -> RawSplit:
    """Read one local data file into a :class:`RawSplit` (rows as dicts, as in the file).

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv`` or ``.parquet`` file.
        limit: keep at most this many rows (``None``: all).
        sample_seed: with ``limit``, keep a seeded random sample instead of the first rows.

    Raises:
        SllmxError: the file is missing, a directory, unreadable, of an unknown type, or
            malformed (naming the file and the line / item).
    """
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise SllmxError(f"data file not found: {path} (working directory {os.getcwd()})")
    if p.is_dir():
        raise SllmxError(f"data path {path} is a directory; give a file ({', '.join(FILE_SUFFIXES)})")
    name = p.name.lower()
    stop = None if sample_seed is not None else limit  # a sample needs every row
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            rows, where = _read_jsonl(p, path, stop)
            template: Optional[str] = "line {}"
        elif name.endswith(".json"):
            rows, where = _read_json(p, path)
            template = "item {}"
        elif name.endswith(".csv"):
            rows, where = _read_csv(p, path, stop)
            template = None  # row N (line M)
        elif name.endswith(".parquet"):
            rows, where = _read_parquet(p, path, stop)
            template = "row {}"
        else:
            raise SllmxError(f"cannot read {path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)} "
                             f"(or a Hugging Face datasets id)")
    except SllmxError:
        raise
    except UnicodeDecodeError as exc:
        raise SllmxError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, zlib.error) as exc:  # permissions, a truncated or corrupt .gz, ...
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise SllmxError(f"cannot read {path}: {reason}") from None
    rows, where = _limit(rows, where, limit, sample_seed)
    return RawSplit(rows=rows, origin=path, line_of=_Positions(where, template))


class _Positions:
    """``line_of`` for a file: row ``i`` → its human position, e.g. ``line 12``."""

    def __init__(self, where: list[Any], template: Optional[str]):
        self.where = where
        self.template = template

    def __call__(self, i: int) -> str:
        pos = self.where[i]
        if self.template is None:  # CSV: (row, line)
            return f"row {pos[0]} (line {pos[1]})"
        return self.template.format(pos)


def _read_jsonl(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[int]]:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    rows, where = [], []
    with opener(p, "rt", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SllmxError(f"{path}, line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise SllmxError(f"{path}, line {lineno}: expected a JSON object, got {_kind(obj)}")
            rows.append(obj)
            where.append(lineno)
            if stop is not None and len(rows) >= stop:
                break
    return rows, where


def _read_json(p: Path, path: str) -> tuple[list[dict], list[int]]:
    with open(p, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            hint = "; one object per line? name the file .jsonl" if exc.msg == "Extra data" else ""
            raise SllmxError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}){hint}") \
                from None
    if not isinstance(data, list):
        raise SllmxError(f"{path}: expected a JSON array of objects, got {_kind(data)}")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise SllmxError(f"{path}, item {i + 1}: expected a JSON object, got {_kind(obj)}")
    return data, list(range(1, len(data) + 1))


def _read_csv(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[tuple[int, int]]]:
    rows, where = [], []
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if not header:
                raise SllmxError(f"{path}: empty CSV file (expected a header row)")
            while stop is None or len(rows) < stop:
                start = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    break
                if not record or all(not v.strip() for v in record):
                    continue  # a blank line
                pos = (len(rows) + 1, start)
                if len(record) != len(header):
                    raise SllmxError(f"{path}, row {pos[0]} (line {pos[1]}): {len(record)} fields, but the header "
                                     f"has {len(header)} ({', '.join(header)})")
                rows.append(dict(zip(header, record)))
                where.append(pos)
        except csv.Error as exc:
            raise SllmxError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return rows, where


def _read_parquet(p: Path, path: str, stop: Optional[int]) -> tuple[list[dict], list[int]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise SllmxError(f"cannot read {path}: not a readable Parquet file ({exc})") from None
    if stop is not None:
        table = table.slice(0, stop)
    rows = table.to_pylist()
    return rows, list(range(1, len(rows) + 1))


def read_hub(path: str, name: Optional[str], split: str, limit: Optional[int] = None,
             sample_seed: Optional[int] = None) -> RawSplit:
    """Load ``datasets.load_dataset(path, name, split=split)`` into a :class:`RawSplit`.

    Raises:
        SllmxError: the dataset could not be loaded (offline, unknown id, bad split), naming it.
    """
    label = path + (f" ({name})" if name else "") + f", split {split!r}"
    try:
        import datasets

        ds = datasets.load_dataset(path, name, split=split)
        n = len(ds)
        if limit is not None and 0 <= limit < n:
            keep = (sorted(random.Random(sample_seed).sample(range(n), limit)) if sample_seed is not None
                    else range(limit))
            ds = ds.select(keep)
            where = [i + 1 for i in keep]
        else:
            where = list(range(1, n + 1))
        rows = ds.to_list()
    except Exception as exc:
        raise SllmxError(f"the dataset {label} could not be loaded: it is not a local file, and "
                         f"datasets.load_dataset failed: {type(exc).__name__}: {exc}") from None
    return RawSplit(rows=rows, origin=path, line_of=_Positions(where, "row {}"))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# Field helpers shared by the formats
# ---------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _missing(row: dict, field: str) -> bool:
    return row.get(field) is None


def _text(row: dict, field: str, optional: bool = False) -> str:
    """A non-empty string field (``optional``: missing / null / empty gives ``""``)."""
    if _missing(row, field):
        if optional:
            return ""
        raise FieldError(field, "is missing")
    value = row[field]
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {_kind(value)}")
    if not value.strip():
        if optional:
            return ""
        raise FieldError(field, "is empty")
    return value


def _message_list(value: Any, field: str, role_key: str = "role", content_key: str = "content",
                  role_map: Optional[dict[str, str]] = None) -> list[dict[str, str]]:
    """Validate a list of messages and return it as ``[{"role", "content"}]``.

    ``role_map`` translates roles (ShareGPT's ``from: human/gpt/system``); without it the
    roles must be system / user / assistant.
    """
    if not isinstance(value, list):
        raise FieldError(field, f"must be a list of messages, got {_kind(value)}")
    if not value:
        raise FieldError(field, "is an empty list")
    allowed = role_map or {r: r for r in ROLES}
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise FieldError(field, f"item {i}: must be an object with {role_key!r} and {content_key!r}, "
                                    f"got {_kind(msg)}")
        role, content = msg.get(role_key), msg.get(content_key)
        if role not in allowed:
            raise FieldError(field, f"item {i}: {role_key} {role!r} is not one of {', '.join(allowed)}")
        if content is None:
            raise FieldError(field, f"item {i}: {content_key!r} is missing")
        if not isinstance(content, str):
            raise FieldError(field, f"item {i}: {content_key} must be a string, got {_kind(content)}")
        if not content.strip():
            raise FieldError(field, f"item {i}: {content_key} is empty")
        out.append({"role": allowed[role], "content": content})
    return out


def _prompt(row: dict, field: str = "prompt") -> list[dict[str, str]]:
    """A prompt given as a string (one user turn) or a list of messages."""
    if _missing(row, field):
        raise FieldError(field, "is missing")
    value = row[field]
    if isinstance(value, str):
        return [{"role": "user", "content": _text(row, field)}]
    if isinstance(value, list):
        return _message_list(value, field)
    raise FieldError(field, f"must be a string or a list of messages, got {_kind(value)}")


def _answer(row: dict, field: str) -> list[dict[str, str]]:
    """A completion / chosen / rejected answer: a string (one assistant turn) or messages ending with the assistant."""
    if _missing(row, field):
        raise FieldError(field, "is missing")
    value = row[field]
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(row, field)}]
    if isinstance(value, list):
        msgs = _message_list(value, field)
        if msgs[-1]["role"] != "assistant":
            raise FieldError(field, f"the last message must be from the assistant, got {msgs[-1]['role']!r}")
        return msgs
    raise FieldError(field, f"must be a string or a list of messages, got {_kind(value)}")


def _split_last(msgs: list[dict[str, str]], field: str) -> tuple[list[dict], list[dict]]:
    """A conversation → (everything before the final assistant reply, [that reply])."""
    if msgs[-1]["role"] != "assistant":
        raise FieldError(field, f"the last message must be from the assistant, got {msgs[-1]['role']!r}")
    if not any(m["role"] == "user" for m in msgs[:-1]):
        raise FieldError(field, "needs a user message before the final assistant reply")
    return msgs[:-1], msgs[-1:]


def _label(row: dict, field: str = "label") -> bool:
    """A KTO label: a boolean, 0/1, or the strings true/false/1/0 (any case)."""
    if _missing(row, field):
        raise FieldError(field, "is missing")
    value = row[field]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise FieldError(field, f"must be true/false (or 1/0), got {value!r}")


def with_system(msgs: list[dict[str, str]], system: Optional[str]) -> list[dict[str, str]]:
    """Put ``system`` first, unless it is empty or the conversation already starts with its own system message."""
    if not system or (msgs and msgs[0]["role"] == "system"):
        return msgs
    return [{"role": "system", "content": system}] + msgs


def _unsupported(fmt: DataFormat, layout: tuple[str, ...]) -> ValueError:
    return ValueError(f"data format {fmt.name!r} cannot produce layout {'/'.join(layout)}; "
                      f"it gives {', '.join('/'.join(x) for x in fmt.layouts)}")


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------


class _CompletionFormat(DataFormat):
    """Base of formats that give one (prompt, completion) per row."""

    layouts = (LAYOUT_PROMPT_COMPLETION,)

    def pair(self, row: dict) -> tuple[list[dict], list[dict]]:
        raise NotImplementedError

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_PROMPT_COMPLETION:
            raise _unsupported(self, layout)
        prompt, completion = self.pair(row)
        return [{"prompt": with_system(prompt, system), "completion": completion}]


class MessagesFormat(DataFormat):
    """Chat rows: messages [{role, content}] ending with the assistant reply."""

    name = "messages"
    columns = ("messages",)
    layouts = (LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION)

    def convert(self, row, layout, system=None):
        if _missing(row, "messages"):
            raise FieldError("messages", "is missing")
        msgs = with_system(_message_list(row["messages"], "messages"), system)
        prompt, completion = _split_last(msgs, "messages")
        if layout == LAYOUT_MESSAGES:
            return [{"messages": msgs}]
        if layout == LAYOUT_PROMPT_COMPLETION:
            return [{"prompt": prompt, "completion": completion}]
        raise _unsupported(self, layout)


class AlpacaFormat(_CompletionFormat):
    """Alpaca rows: instruction, input (optional), output."""

    name = "alpaca"
    columns = ("instruction", "output")

    def pair(self, row):
        user = _text(row, "instruction")
        extra = _text(row, "input", optional=True)
        if extra:
            user = f"{user}\n\n{extra}"
        return [{"role": "user", "content": user}], [{"role": "assistant", "content": _text(row, "output")}]


class PromptCompletionFormat(_CompletionFormat):
    """Prompt / completion rows, each a string or a list of messages."""

    name = "prompt_completion"
    columns = ("prompt", "completion")

    def pair(self, row):
        return _prompt(row), _answer(row, "completion")


class _PairFormat(DataFormat):
    """Base of preference formats: one (prompt, chosen, rejected) per row."""

    layouts = (LAYOUT_PREFERENCE, LAYOUT_UNPAIRED, LAYOUT_PROMPT_COMPLETION)

    def triple(self, row: dict) -> tuple[list[dict], list[dict], list[dict]]:
        raise NotImplementedError

    def convert(self, row, layout, system=None):
        prompt, chosen, rejected = self.triple(row)
        prompt = with_system(prompt, system)
        if layout == LAYOUT_PREFERENCE:
            return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
        if layout == LAYOUT_UNPAIRED:  # as trl.data_utils.unpair_preference_dataset
            return [{"prompt": prompt, "completion": chosen, "label": True},
                    {"prompt": prompt, "completion": rejected, "label": False}]
        if layout == LAYOUT_PROMPT_COMPLETION:
            return [{"prompt": prompt, "completion": chosen}]
        raise _unsupported(self, layout)


class PreferenceFormat(_PairFormat):
    """Preference pairs: prompt, chosen, rejected (strings or message lists)."""

    name = "preference"
    columns = ("prompt", "chosen", "rejected")

    def triple(self, row):
        return _prompt(row), _answer(row, "chosen"), _answer(row, "rejected")


class ShareGPTPreferenceFormat(_PairFormat):
    """ShareGPT pairs (LLaMA-Factory dpo_en_demo): conversations [{from, value}], chosen/rejected {from, value}."""

    name = "sharegpt_preference"
    columns = ("conversations", "chosen", "rejected")

    def triple(self, row):
        if _missing(row, "conversations"):
            raise FieldError("conversations", "is missing")
        prompt = _message_list(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
        if prompt[-1]["role"] != "user":
            raise FieldError("conversations", f"must end with a human turn, got {prompt[-1]['role']!r}")
        return prompt, self._turn(row, "chosen"), self._turn(row, "rejected")

    @staticmethod
    def _turn(row: dict, field: str) -> list[dict[str, str]]:
        """``chosen`` / ``rejected``: ``{from: gpt, value}`` (or a plain string)."""
        if _missing(row, field):
            raise FieldError(field, "is missing")
        value = row[field]
        if isinstance(value, str):
            return [{"role": "assistant", "content": _text(row, field)}]
        if not isinstance(value, dict):
            raise FieldError(field, f"must be an object {{from, value}} or a string, got {_kind(value)}")
        if value.get("from", "gpt") != "gpt":
            raise FieldError(field, f"'from' must be 'gpt', got {value.get('from')!r}")
        text = value.get("value")
        if text is None:
            raise FieldError(field, "'value' is missing")
        if not isinstance(text, str):
            raise FieldError(field, f"'value' must be a string, got {_kind(text)}")
        if not text.strip():
            raise FieldError(field, "'value' is empty")
        return [{"role": "assistant", "content": text}]


class KTOFormat(DataFormat):
    """Unpaired KTO rows: prompt, completion, label (true = desirable)."""

    name = "kto"
    columns = ("prompt", "completion", "label")
    layouts = (LAYOUT_UNPAIRED,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_UNPAIRED:
            raise _unsupported(self, layout)
        return [{"prompt": with_system(_prompt(row), system), "completion": _answer(row, "completion"),
                 "label": _label(row)}]


class KTOMessagesFormat(DataFormat):
    """Unpaired KTO chats (LLaMA-Factory kto_en_demo): messages [{role, content}], label."""

    name = "kto_messages"
    columns = ("messages", "label")
    layouts = (LAYOUT_UNPAIRED,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_UNPAIRED:
            raise _unsupported(self, layout)
        if _missing(row, "messages"):
            raise FieldError("messages", "is missing")
        prompt, completion = _split_last(_message_list(row["messages"], "messages"), "messages")
        return [{"prompt": with_system(prompt, system), "completion": completion, "label": _label(row)}]


class TextFormat(DataFormat):
    """Plain text rows for continued pre-training: text (the system prompt does not apply)."""

    name = "text"
    columns = ("text",)
    layouts = (LAYOUT_TEXT,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_TEXT:
            raise _unsupported(self, layout)
        return [{"text": _text(row, "text")}]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"


def parse_hh(text: str, field: str) -> list[dict[str, str]]:
    """An Anthropic HH-RLHF transcript ``"\\n\\nHuman: … \\n\\nAssistant: …"`` → messages.

    Consecutive turns of the same speaker are joined (chat templates such as Gemma's require
    alternating roles).
    """
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise FieldError(field, "is not a HH-RLHF transcript (it must start with '\\n\\nHuman:')")
    msgs: list[dict[str, str]] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = ("user" if speaker == "Human" else "assistant"), content.strip()
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{content}".strip()
        else:
            msgs.append({"role": role, "content": content})
    if any(not m["content"] for m in msgs):
        raise FieldError(field, "has an empty turn in the prompt")
    return msgs


class HHRLHFFormat(_PairFormat):
    """Anthropic HH-RLHF pairs: chosen / rejected whole transcripts sharing the prompt."""

    name = "hh_rlhf"
    columns = ("chosen", "rejected")

    def triple(self, row):
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        cut = os.path.commonprefix([chosen, rejected]).rfind(_HH_ASSISTANT)
        if cut < 0:
            raise FieldError("chosen", "chosen and rejected share no prompt ending in '\\n\\nAssistant:'")
        prompt = parse_hh(chosen[:cut], "chosen")
        answers = []
        for field, text in (("chosen", chosen), ("rejected", rejected)):
            answer = text[cut + len(_HH_ASSISTANT):].strip()
            if not answer:
                raise FieldError(field, "the final assistant response is empty")
            answers.append([{"role": "assistant", "content": answer}])
        return prompt, answers[0], answers[1]


class SummarizationFormat(_CompletionFormat):
    """Document / dialogue summarization: ``dialogue`` (or ``document``) and ``summary``.

    The prompt is one user turn, ``Summarize the following dialogue.`` (or ``document``) and the
    text; the completion is ``summary``, else ``summary1`` (DialogSum's test file has three
    reference summaries, ``summary1..3``; the first is used).
    """

    name = "summarization"
    columns = ("dialogue", "summary")

    def pair(self, row):
        kind = "dialogue" if not _missing(row, "dialogue") else "document"
        text = _text(row, kind)
        target = "summary" if not _missing(row, "summary") or _missing(row, "summary1") else "summary1"
        return ([{"role": "user", "content": f"Summarize the following {kind}.\n\n{text}"}],
                [{"role": "assistant", "content": _text(row, target)}])


FORMATS: tuple[type[DataFormat], ...] = (
    MessagesFormat, AlpacaFormat, PromptCompletionFormat, PreferenceFormat, ShareGPTPreferenceFormat,
    KTOFormat, KTOMessagesFormat, TextFormat, HHRLHFFormat, SummarizationFormat,
)


@hookimpl
def sllmx_data_sources() -> list[DataSource]:
    """Register the files data source."""
    return [FilesSource()]


@hookimpl
def sllmx_data_formats() -> list[DataFormat]:
    """Register the built-in row formats."""
    return [cls() for cls in FORMATS]
