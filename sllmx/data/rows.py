"""What a data-format plugin needs to turn a row into TRL's conversational layouts.

A :class:`~sllmx.interfaces.DataFormat` reads one row (a dict, as in the file) and returns examples
in a layout (https://huggingface.co/docs/trl/dataset_formats).  The field readers below check a field
and raise :class:`~sllmx.interfaces.FieldError` naming it, which the pipeline reports with the file
and line ("data.jsonl, line 12: field 'chosen': is empty").  :class:`CompletionFormat` and
:class:`PairFormat` are bases for formats that give one (prompt, completion) or one (prompt, chosen,
rejected) per row: a subclass implements ``pair`` or ``triple`` and gets every layout the base can
produce.  Public: the built-in formats and third-party ones use the same helpers (docs/plugins.md).
"""

from __future__ import annotations

from typing import Any, Optional

from sllmx.interfaces import (
    LAYOUT_PREFERENCE,
    LAYOUT_PROMPT_COMPLETION,
    LAYOUT_UNPAIRED,
    DataFormat,
    FieldError,
)


def kind_of(value: Any) -> str:
    """The JSON kind of ``value`` in words (``an object``, ``a list``, ``null``, ...), for error messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def is_missing(row: dict, field: str) -> bool:
    """True when ``field`` is absent or null."""
    return row.get(field) is None


def text_field(row: dict, field: str, optional: bool = False) -> str:
    """A non-empty string field (``optional``: missing / null / empty gives ``""``)."""
    if is_missing(row, field):
        if optional:
            return ""
        raise FieldError(field, "is missing")
    value = row[field]
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {kind_of(value)}")
    if not value.strip():
        if optional:
            return ""
        raise FieldError(field, "is empty")
    return value


def messages_field(value: Any, field: str, role_key: str = "role", content_key: str = "content",
                  role_map: Optional[dict[str, str]] = None) -> list[dict[str, str]]:
    """Validate a list of messages and return it as ``[{"role", "content"}]``.

    ``role_map`` translates roles (ShareGPT's ``from: human/gpt/system``); without it the
    roles must be system / user / assistant.
    """
    if not isinstance(value, list):
        raise FieldError(field, f"must be a list of messages, got {kind_of(value)}")
    if not value:
        raise FieldError(field, "is an empty list")
    allowed = role_map or {r: r for r in ROLES}
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise FieldError(field, f"item {i}: must be an object with {role_key!r} and {content_key!r}, "
                                    f"got {kind_of(msg)}")
        role, content = msg.get(role_key), msg.get(content_key)
        if role not in allowed:
            raise FieldError(field, f"item {i}: {role_key} {role!r} is not one of {', '.join(allowed)}")
        if content is None:
            raise FieldError(field, f"item {i}: {content_key!r} is missing")
        if not isinstance(content, str):
            raise FieldError(field, f"item {i}: {content_key} must be a string, got {kind_of(content)}")
        if not content.strip():
            raise FieldError(field, f"item {i}: {content_key} is empty")
        out.append({"role": allowed[role], "content": content})
    return out


def prompt_field(row: dict, field: str = "prompt") -> list[dict[str, str]]:
    """A prompt given as a string (one user turn) or a list of messages."""
    if is_missing(row, field):
        raise FieldError(field, "is missing")
    value = row[field]
    if isinstance(value, str):
        return [{"role": "user", "content": text_field(row, field)}]
    if isinstance(value, list):
        return messages_field(value, field)
    raise FieldError(field, f"must be a string or a list of messages, got {kind_of(value)}")


def answer_field(row: dict, field: str) -> list[dict[str, str]]:
    """A completion / chosen / rejected answer: a string (one assistant turn) or messages ending with the assistant."""
    if is_missing(row, field):
        raise FieldError(field, "is missing")
    value = row[field]
    if isinstance(value, str):
        return [{"role": "assistant", "content": text_field(row, field)}]
    if isinstance(value, list):
        msgs = messages_field(value, field)
        if msgs[-1]["role"] != "assistant":
            raise FieldError(field, f"the last message must be from the assistant, got {msgs[-1]['role']!r}")
        return msgs
    raise FieldError(field, f"must be a string or a list of messages, got {kind_of(value)}")


def split_last(msgs: list[dict[str, str]], field: str) -> tuple[list[dict], list[dict]]:
    """A conversation → (everything before the final assistant reply, [that reply])."""
    if msgs[-1]["role"] != "assistant":
        raise FieldError(field, f"the last message must be from the assistant, got {msgs[-1]['role']!r}")
    if not any(m["role"] == "user" for m in msgs[:-1]):
        raise FieldError(field, "needs a user message before the final assistant reply")
    return msgs[:-1], msgs[-1:]


def label_field(row: dict, field: str = "label") -> bool:
    """A KTO label: a boolean, 0/1, or the strings true/false/1/0 (any case)."""
    if is_missing(row, field):
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


def unsupported(fmt: DataFormat, layout: tuple[str, ...]) -> ValueError:
    """The error a format raises for a layout it cannot produce (naming the layouts it gives)."""
    return ValueError(f"data format {fmt.name!r} cannot produce layout {'/'.join(layout)}; "
                      f"it gives {', '.join('/'.join(x) for x in fmt.layouts)}")


class CompletionFormat(DataFormat):
    """Base of formats that give one (prompt, completion) per row."""

    layouts = (LAYOUT_PROMPT_COMPLETION,)

    def pair(self, row: dict) -> tuple[list[dict], list[dict]]:
        """``(prompt messages, completion messages)`` of one row (a subclass implements it).

        Raises:
            FieldError: a field missing, empty or of the wrong type.
        """
        raise NotImplementedError

    def convert(self, row, layout, system=None):
        """The row's one prompt/completion example, ``system`` put first in the prompt."""
        if layout != LAYOUT_PROMPT_COMPLETION:
            raise unsupported(self, layout)
        prompt, completion = self.pair(row)
        return [{"prompt": with_system(prompt, system), "completion": completion}]


class PairFormat(DataFormat):
    """Base of preference formats: one (prompt, chosen, rejected) per row."""

    layouts = (LAYOUT_PREFERENCE, LAYOUT_UNPAIRED, LAYOUT_PROMPT_COMPLETION)

    def triple(self, row: dict) -> tuple[list[dict], list[dict], list[dict]]:
        """``(prompt, chosen answer, rejected answer)`` messages of one row (a subclass implements it).

        Raises:
            FieldError: a field missing, empty or of the wrong type.
        """
        raise NotImplementedError

    def convert(self, row, layout, system=None):
        """The pair as one preference example, two unpaired rows (chosen ``label=True`` first), or the chosen
        answer as a prompt/completion example (SFT on preference data)."""
        prompt, chosen, rejected = self.triple(row)
        prompt = with_system(prompt, system)
        if layout == LAYOUT_PREFERENCE:
            return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
        if layout == LAYOUT_UNPAIRED:  # as trl.data_utils.unpair_preference_dataset
            return [{"prompt": prompt, "completion": chosen, "label": True},
                    {"prompt": prompt, "completion": rejected, "label": False}]
        if layout == LAYOUT_PROMPT_COMPLETION:
            return [{"prompt": prompt, "completion": chosen}]
        raise unsupported(self, layout)


def last_user_text(prompt: Any) -> str:
    """The text of a prompt's last user message (the whole prompt when it is a string)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def with_user_text(prompt: Any, text: str) -> Any:
    """``prompt`` with its last user message's text replaced by ``text`` (a string prompt becomes ``text``; a
    prompt with no user message gains one at the end); ``prompt`` itself is not changed."""
    if isinstance(prompt, str):
        return text
    out = [dict(m) for m in prompt]
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = text
            return out
    return [*out, {"role": "user", "content": text}]
