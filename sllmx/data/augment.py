"""Instruction-template augmentation of the train split (issue 19): each train example gains ``k`` copies whose
request (the last user message) is rephrased by a template, e.g. ``"아래 내용을 읽고 답해 주세요:\\n{instruction}"``.

The guides behind sllmx suggest augmenting instructions with several templates so that a fine-tuned model does
not learn one phrasing only.  Applied to train only (dev and test keep the data's prompts), after the hold-out
and before the leakage check (a row that leaks is dropped with its copies), seeded by ``data.split_seed`` and
the row, so every training seed sees the same augmented data.  The copies go into the row's own examples: the
data checks still see one row.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

from sllmx.data.rows import last_user_text, with_user_text
from sllmx.errors import SllmxError

__all__ = ["PLACEHOLDER", "BUILTIN", "templates_of", "check_augmentation", "augment_row"]

#: where a template puts the original request
PLACEHOLDER = "{instruction}"
#: built-in template lists, by name (``data.augment_templates=ko``)
BUILTIN: dict[str, tuple[str, ...]] = {
    "ko": (
        "다음 요청을 처리해 주세요.\n{instruction}",
        "아래 내용을 읽고 알맞게 답해 주세요:\n{instruction}",
        "{instruction}\n\n위 요청에 맞는 답변을 작성하세요.",
        "질문: {instruction}",
        "사용자 메시지: {instruction}\n적절한 응답을 주세요.",
        "{instruction}\n(요청에 정확히 답해 주세요.)",
    ),
}


def templates_of(value: Any) -> list[str]:
    """The template list of ``data.augment_templates``: a built-in name (:data:`BUILTIN`) or a list of strings.

    Raises:
        SllmxError: an unknown name, an empty list, or a template without :data:`PLACEHOLDER` (one line naming it).
    """
    if isinstance(value, str):
        if value not in BUILTIN:
            raise SllmxError(f"data.augment_templates={value}: not a built-in list ({', '.join(sorted(BUILTIN))}); "
                             f"give a list of templates, each with {PLACEHOLDER}")
        return list(BUILTIN[value])
    out = [str(t) for t in (value or [])]
    if not out:
        raise SllmxError(f"data.augment_templates is empty; give a list of templates, each with {PLACEHOLDER}")
    for n, template in enumerate(out):
        if PLACEHOLDER not in template:
            raise SllmxError(f"data.augment_templates[{n}]={template!r}: has no {PLACEHOLDER} (where the original "
                             f"request goes)")
    return out


def check_augmentation(k: int, templates: Optional[Any], layout: Sequence[str]) -> Optional[list[str]]:
    """The templates to use for ``data.augment_k=k`` (None when ``k`` is 0), checked against the split layout.

    Raises:
        SllmxError: templates missing, fewer than ``k`` of them, or a layout with no prompt (plain ``text``).
    """
    if not k:
        return None
    if templates is None:
        raise SllmxError(f"data.augment_k={k} needs data.augment_templates (a list, or ko for the built-in one)")
    out = templates_of(templates)
    if k > len(out):
        raise SllmxError(f"data.augment_k={k} is more than the {len(out)} templates of data.augment_templates "
                         f"(each copy uses a different one)")
    if "prompt" not in layout and "messages" not in layout:
        raise SllmxError(f"data.augment_k={k}: the {'/'.join(layout)} layout has no prompt to rephrase")
    return out


def _rephrased(example: dict[str, Any], template: str) -> dict[str, Any]:
    fill = lambda prompt: with_user_text(prompt, template.replace(PLACEHOLDER, last_user_text(prompt)))  # noqa: E731
    if "prompt" in example:
        return {**example, "prompt": fill(example["prompt"])}
    messages = list(example["messages"])
    return {**example, "messages": [*fill(messages[:-1]), messages[-1]]}


def augment_row(examples: list[dict[str, Any]], templates: list[str], k: int, seed: int, row: int) -> list[dict]:
    """``examples`` (one row's converted examples) followed by ``k`` copies of each, each copy's request
    rephrased by a different template drawn with ``random.Random(f"{seed}:{row}")``."""
    chosen = random.Random(f"{seed}:{row}").sample(templates, k)
    return [*examples, *(_rephrased(ex, t) for t in chosen for ex in examples)]
