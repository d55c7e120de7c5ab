"""Built-in row formats of preference data: pairs (prompt, chosen, rejected), ShareGPT pairs, Anthropic HH
transcripts, and unpaired KTO rows::

    python -m sllmx trainer=dpo data=files data.path=pairs.jsonl data.format=preference

===================  ==========================================  =====================================
name                 required columns                            layouts (preferred first)
===================  ==========================================  =====================================
preference           prompt, chosen, rejected                    preference, unpaired, prompt/completion
sharegpt_preference  conversations [{from, value}], chosen,      preference, unpaired, prompt/completion
                     rejected ({from, value}; LLaMA-Factory)
hh_rlhf              chosen, rejected (Anthropic HH transcripts) preference, unpaired, prompt/completion
kto                  prompt, completion, label                   unpaired
kto_messages         messages, label (LLaMA-Factory)             unpaired
===================  ==========================================  =====================================

The ``unpaired`` layout of a pair is two rows, the chosen answer with ``label=True`` then the rejected
one with ``label=False`` — what TRL's ``unpair_preference_dataset`` produces.  The ``prompt/completion``
layout of a pair keeps the chosen answer (SFT on preference data).
"""

from __future__ import annotations

import os
import re

from sllmx import hookimpl
from sllmx.data.rows import (SHAREGPT_ROLES, PairFormat, answer_field, is_missing, kind_of, label_field,
                             messages_field, prompt_field, split_last, text_field, unsupported, with_system)
from sllmx.interfaces import LAYOUT_UNPAIRED, DataFormat, FieldError

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"


class PreferenceFormat(PairFormat):
    """Preference pairs: prompt, chosen, rejected (strings or message lists)."""

    name = "preference"
    columns = ("prompt", "chosen", "rejected")

    def triple(self, row):
        return prompt_field(row), answer_field(row, "chosen"), answer_field(row, "rejected")


class ShareGPTPreferenceFormat(PairFormat):
    """ShareGPT pairs (LLaMA-Factory dpo_en_demo): conversations [{from, value}], chosen/rejected {from, value}."""

    name = "sharegpt_preference"
    columns = ("conversations", "chosen", "rejected")

    def triple(self, row):
        if is_missing(row, "conversations"):
            raise FieldError("conversations", "is missing")
        prompt = messages_field(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
        if prompt[-1]["role"] != "user":
            raise FieldError("conversations", f"must end with a human turn, got {prompt[-1]['role']!r}")
        return prompt, self._turn(row, "chosen"), self._turn(row, "rejected")

    @staticmethod
    def _turn(row: dict, field: str) -> list[dict[str, str]]:
        """``chosen`` / ``rejected``: ``{from: gpt, value}`` (or a plain string)."""
        if is_missing(row, field):
            raise FieldError(field, "is missing")
        value = row[field]
        if isinstance(value, str):
            return [{"role": "assistant", "content": text_field(row, field)}]
        if not isinstance(value, dict):
            raise FieldError(field, f"must be an object {{from, value}} or a string, got {kind_of(value)}")
        if value.get("from", "gpt") != "gpt":
            raise FieldError(field, f"'from' must be 'gpt', got {value.get('from')!r}")
        text = value.get("value")
        if text is None:
            raise FieldError(field, "'value' is missing")
        if not isinstance(text, str):
            raise FieldError(field, f"'value' must be a string, got {kind_of(text)}")
        if not text.strip():
            raise FieldError(field, "'value' is empty")
        return [{"role": "assistant", "content": text}]


class HHRLHFFormat(PairFormat):
    """Anthropic HH-RLHF pairs: chosen / rejected whole transcripts sharing the prompt."""

    name = "hh_rlhf"
    columns = ("chosen", "rejected")

    def triple(self, row):
        chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
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


class KTOFormat(DataFormat):
    """Unpaired KTO rows: prompt, completion, label (true = desirable)."""

    name = "kto"
    columns = ("prompt", "completion", "label")
    layouts = (LAYOUT_UNPAIRED,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_UNPAIRED:
            raise unsupported(self, layout)
        return [{"prompt": with_system(prompt_field(row), system), "completion": answer_field(row, "completion"),
                 "label": label_field(row)}]


class KTOMessagesFormat(DataFormat):
    """Unpaired KTO chats (LLaMA-Factory kto_en_demo): messages [{role, content}], label."""

    name = "kto_messages"
    columns = ("messages", "label")
    layouts = (LAYOUT_UNPAIRED,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_UNPAIRED:
            raise unsupported(self, layout)
        if is_missing(row, "messages"):
            raise FieldError("messages", "is missing")
        prompt, completion = split_last(messages_field(row["messages"], "messages"), "messages")
        return [{"prompt": with_system(prompt, system), "completion": completion, "label": label_field(row)}]


@hookimpl
def sllmx_data_formats() -> list[DataFormat]:
    """Register the preference, ShareGPT, HH-RLHF and KTO formats."""
    return [PreferenceFormat(), ShareGPTPreferenceFormat(), HHRLHFFormat(), KTOFormat(), KTOMessagesFormat()]
