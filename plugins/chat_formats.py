"""Built-in row formats that give one conversation per row: chat ``messages``, Alpaca, prompt/completion,
plain ``text`` (continued pre-training) and summarization (DialogSum)::

    python -m sllmx data=files data.path=train.jsonl data.format=alpaca

=================  ==========================================  ==========================
name               required columns                            layouts (preferred first)
=================  ==========================================  ==========================
messages           messages [{role, content}]                  messages, prompt/completion
alpaca             instruction, output (input optional)        prompt/completion
prompt_completion  prompt, completion (strings or messages)    prompt/completion
text               text                                        text
summarization      dialogue (or document), summary (or         prompt/completion
                   summary1: DialogSum's test file)
=================  ==========================================  ==========================

Every conversation comes out in TRL's conversational form, lists of ``{"role", "content"}`` messages
(https://huggingface.co/docs/trl/dataset_formats); the field helpers are :mod:`sllmx.data.rows`.
"""

from __future__ import annotations

from sllmx import hookimpl
from sllmx.data.rows import (CompletionFormat, answer_field, is_missing, messages_field, prompt_field, split_last,
                             text_field, unsupported, with_system)
from sllmx.interfaces import LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION, LAYOUT_TEXT, DataFormat, FieldError


class MessagesFormat(DataFormat):
    """Chat rows: messages [{role, content}] ending with the assistant reply."""

    name = "messages"
    columns = ("messages",)
    layouts = (LAYOUT_MESSAGES, LAYOUT_PROMPT_COMPLETION)

    def convert(self, row, layout, system=None):
        if is_missing(row, "messages"):
            raise FieldError("messages", "is missing")
        msgs = with_system(messages_field(row["messages"], "messages"), system)
        prompt, completion = split_last(msgs, "messages")
        if layout == LAYOUT_MESSAGES:
            return [{"messages": msgs}]
        if layout == LAYOUT_PROMPT_COMPLETION:
            return [{"prompt": prompt, "completion": completion}]
        raise unsupported(self, layout)


class AlpacaFormat(CompletionFormat):
    """Alpaca rows: instruction, input (optional), output."""

    name = "alpaca"
    columns = ("instruction", "output")

    def pair(self, row):
        user = text_field(row, "instruction")
        extra = text_field(row, "input", optional=True)
        if extra:
            user = f"{user}\n\n{extra}"
        return [{"role": "user", "content": user}], [{"role": "assistant", "content": text_field(row, "output")}]


class PromptCompletionFormat(CompletionFormat):
    """Prompt / completion rows, each a string or a list of messages."""

    name = "prompt_completion"
    columns = ("prompt", "completion")

    def pair(self, row):
        return prompt_field(row), answer_field(row, "completion")


class TextFormat(DataFormat):
    """Plain text rows for continued pre-training: text (the system prompt does not apply)."""

    name = "text"
    columns = ("text",)
    layouts = (LAYOUT_TEXT,)

    def convert(self, row, layout, system=None):
        if layout != LAYOUT_TEXT:
            raise unsupported(self, layout)
        return [{"text": text_field(row, "text")}]


class SummarizationFormat(CompletionFormat):
    """Document / dialogue summarization: ``dialogue`` (or ``document``) and ``summary``.

    The prompt is one user turn, ``Summarize the following dialogue.`` (or ``document``) and the
    text; the completion is ``summary``, else ``summary1`` (DialogSum's test file has three
    reference summaries, ``summary1..3``; the first is used).
    """

    name = "summarization"
    columns = ("dialogue", "summary")

    def pair(self, row):
        kind = "dialogue" if not is_missing(row, "dialogue") else "document"
        text = text_field(row, kind)
        target = "summary" if not is_missing(row, "summary") or is_missing(row, "summary1") else "summary1"
        return ([{"role": "user", "content": f"Summarize the following {kind}.\n\n{text}"}],
                [{"role": "assistant", "content": text_field(row, target)}])


@hookimpl
def sllmx_data_formats() -> list[DataFormat]:
    """Register the chat, Alpaca, prompt/completion, text and summarization formats."""
    return [MessagesFormat(), AlpacaFormat(), PromptCompletionFormat(), TextFormat(), SummarizationFormat()]
