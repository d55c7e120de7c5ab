"""Chat templates for models that have none, or whose template lacks ``{% generation %}`` markers.

Public: model-source plugins (the built-in ``gguf`` and ``tiny`` sources, and third-party ones)
give the tokenizers they build one of these.  Every template here wraps the assistant's turns in
``{% generation %}`` ... ``{% endgeneration %}``, which ``apply_chat_template(...,
return_assistant_tokens_mask=True)`` and TRL's ``assistant_only_loss`` need
(https://huggingface.co/docs/transformers/chat_templating_writing).  No heavy import.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional


def _jinja_str(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") + "'"


def chatml_template(default_system: Optional[str] = None) -> str:
    """A ChatML chat template (``<|im_start|>role\\n...<|im_end|>\\n``) with ``add_generation_prompt``.

    Assistant turns (content and ``<|im_end|>``) are wrapped in ``{% generation %}`` so
    ``apply_chat_template(..., return_assistant_tokens_mask=True)`` and TRL's
    ``assistant_only_loss`` work.  With ``default_system``, a conversation that does not start
    with a system message gets that one (SmolLM2's behaviour).
    """
    head = ""
    if default_system:
        head = ("{%- if messages and messages[0]['role'] != 'system' -%}"
                "{{- '<|im_start|>system\\n' + " + _jinja_str(default_system) + " + '<|im_end|>\\n' -}}"
                "{%- endif -%}")
    return (
        head
        + "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- '<|im_start|>assistant\\n' -}}"
        "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
        "{{- '\\n' -}}"
        "{%- else -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def gemma_template() -> str:
    """The Gemma instruct models' turns, for Gemma base models (which ship without a template):
    ``<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n...<eos>\n``, a system message put
    before the first user turn's text (Gemma has no system role), the model's turns in
    ``{% generation %}`` (TRL's ``assistant_only_loss``).  The user turns are those of
    google/gemma-3-270m-it's ``chat_template``; the model's turn ends with ``<eos>`` instead of
    ``<end_of_turn>``: in the base model ``<end_of_turn>``'s embedding is untrained (cosine 0.99 with
    ``<unused815>``'s in Gemma-3-270M), so a LoRA model cannot learn to emit it (measured: after 16 SFT steps
    it gave ``<end_of_turn>`` 1.9% and ``<unused66>`` 2.1% after the answer, and 15 of 16 answers ran to the
    token limit), while ``<eos>`` ends every document it was trained on.  Generation stops at either."""
    return (
        "{{- bos_token -}}"
        "{%- set first = 1 if messages and messages[0]['role'] == 'system' else 0 -%}"
        "{%- for message in messages[first:] -%}"
        "{%- set text = (messages[0]['content'] + '\\n\\n' + message['content']) if first and loop.first "
        "else message['content'] -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- '<start_of_turn>model\\n' -}}"
        "{%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}"
        "{{- '\\n' -}}"
        "{%- else -%}"
        "{{- '<start_of_turn>user\\n' + text + '<end_of_turn>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
    )


#: chat formats a GGUF conversion can be given (``model.chat_template``): name -> (template, end-of-turn token)
CHAT_TEMPLATES: dict[str, tuple[Callable[[], str], Optional[str]]] = {
    "chatml": (chatml_template, None), "gemma": (gemma_template, "<end_of_turn>")}


_PROBES = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "q2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
]


def with_generation_markers(tokenizer: Any) -> Optional[str]:
    """A ChatML template with ``{% generation %}`` markers that renders exactly like the
    tokenizer's own template on probe conversations, or ``None`` when there is none."""
    original = tokenizer.chat_template
    if not isinstance(original, str):
        return None

    def render(template: str, messages: list, gen: bool) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=gen)

    try:
        alone = render(original, [{"role": "user", "content": "X"}], False)
    except Exception:
        return None
    m = re.fullmatch(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n<\|im_start\|>user\nX<\|im_end\|>\n", alone, re.S)
    candidate = chatml_template(m.group(1) if m else None)
    try:
        for messages in _PROBES:
            for gen in (False, True):
                if render(original, messages, gen) != render(candidate, messages, gen):
                    return None
    except Exception:
        return None
    return candidate
