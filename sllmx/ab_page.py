"""What the judges of a blind A/B study get (``python -m sllmx.abtest export``): one self-contained HTML page
and the same items as a spreadsheet (``items.csv``).

The page is plain HTML with inline CSS and JavaScript, no network (a Content-Security-Policy forbids every
fetch), and works opened from ``file://``: every item's question, answer A and answer B side by side, radio
buttons A / B / tie / both bad and an optional comment, a judge-name field, the progress ("12 of 30 judged"),
an English/Korean toggle, and a button that downloads the judgments as ``judgments-<judge>.csv`` (columns
``item,judgment,judge,comment,export``; UTF-8 with a BOM).  The choices are kept in the browser's
``localStorage`` under the export's id, so a reload loses nothing.  Every text is escaped for HTML here; the
page's JavaScript never parses the answers as HTML.  Nothing of the runs (folders, methods, configs) is on it.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any, Sequence

#: the labels in the judgments, with the radio buttons' texts in each language (``score`` accepts them too)
CHOICES = ("A", "B", "tie", "both_bad")

#: every text of the page, in English and Korean (``{done}``, ``{total}``, ``{file}`` are filled in)
TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Blind A/B evaluation",
        "switch": "한국어",
        "intro": "Each question below was answered by two systems. Which one wrote which answer is hidden, and "
                 "the sides are shuffled. Choose the better answer for each question (or tie, or both bad), "
                 "enter your name, and save: the file goes to your downloads folder; send it back. Your "
                 "choices are kept in this browser until you save, so you can close the page and return.",
        "judge": "Your name",
        "progress": "{done} of {total} judged",
        "save": "Save judgments (CSV)",
        "need_name": "Enter your name before saving.",
        "saved": "Saved {file} ({done} of {total} judged).",
        "item": "Item",
        "question": "Question",
        "reference": "Reference answer",
        "answer_A": "Answer A",
        "answer_B": "Answer B",
        "which": "Which answer is better?",
        "A": "A is better",
        "B": "B is better",
        "tie": "Tie",
        "both_bad": "Both bad",
        "comment": "Comment (optional)",
    },
    "ko": {
        "title": "블라인드 A/B 평가",
        "switch": "English",
        "intro": "아래 각 질문에 두 시스템이 답했습니다. 어느 시스템이 어느 답변을 썼는지는 숨겨져 있고, "
                 "좌우 순서도 무작위입니다. 질문마다 더 나은 답변을 고르고(비슷함, 둘 다 나쁨도 가능), 이름을 "
                 "입력한 뒤 저장하세요. 파일은 다운로드 폴더에 저장되니 그 파일을 보내 주세요. 저장하기 전까지 "
                 "선택은 이 브라우저에 보관되므로 페이지를 닫았다가 다시 열어도 됩니다.",
        "judge": "평가자 이름",
        "progress": "{total}개 중 {done}개 평가함",
        "save": "평가 저장 (CSV)",
        "need_name": "저장하기 전에 이름을 입력하세요.",
        "saved": "{file} 저장됨 ({total}개 중 {done}개 평가함).",
        "item": "항목",
        "question": "질문",
        "reference": "참고 답변",
        "answer_A": "답변 A",
        "answer_B": "답변 B",
        "which": "어느 답변이 더 나은가요?",
        "A": "A가 더 좋음",
        "B": "B가 더 좋음",
        "tie": "비슷함",
        "both_bad": "둘 다 나쁨",
        "comment": "의견 (선택)",
    },
}

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI","Apple SD Gothic Neo","Malgun Gothic","Noto Sans KR",sans-serif;
margin:0;background:#f6f7f9;color:#1d2330;line-height:1.5}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #d8dce3;padding:.6rem 1rem}
.bar{display:flex;flex-wrap:wrap;gap:.6rem 1rem;align-items:center}
h1{font-size:1.2rem;margin:0;flex:1 1 auto}
.intro{margin:0 0 1rem;font-size:.92rem;color:#444c5a;max-width:70rem}
button{font:inherit;padding:.35rem .8rem;border:1px solid #8a93a3;border-radius:.4rem;background:#fff;cursor:pointer}
button#save{background:#1f5fbf;border-color:#1f5fbf;color:#fff}
input#judge{font:inherit;padding:.3rem .5rem;border:1px solid #8a93a3;border-radius:.4rem}
#progress{font-weight:600}
#status{color:#1f6f3f;margin:.2rem 0 0;min-height:1.2em;font-size:.9rem}
#status.warn{color:#b3261e}
main{padding:1rem;max-width:90rem;margin:0 auto}
.item{background:#fff;border:1px solid #d8dce3;border-radius:.6rem;padding:.8rem 1rem;margin:0 0 1rem}
.item.done{box-shadow:inset .35rem 0 0 #1f5fbf}
h2{font-size:1rem;margin:0 0 .4rem}
h3{font-size:.85rem;margin:0 0 .2rem;color:#586174;text-transform:uppercase;letter-spacing:.03em}
.text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.95rem;margin:0}
.answer .text{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"D2Coding",monospace;font-size:.88rem}
.question,.reference{margin-bottom:.6rem}
.reference{background:#f3f6ec;border-radius:.4rem;padding:.4rem .6rem}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:.8rem}
.answer{border:1px solid #e1e4ea;border-radius:.4rem;padding:.5rem .6rem;background:#fbfcfd}
@media (max-width:48rem){.answers{grid-template-columns:1fr}}
fieldset{border:0;margin:.6rem 0 .2rem;padding:0;display:flex;flex-wrap:wrap;gap:.3rem 1.2rem}
legend{font-weight:600;margin-bottom:.2rem;padding:0}
fieldset label{cursor:pointer}
.comment{display:block;font-size:.9rem;color:#444c5a}
.comment textarea{display:block;width:100%;font:inherit;margin-top:.2rem}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var TEXT = JSON.parse(document.getElementById("sllmx-text").textContent);
  var body = document.body;
  var exportId = body.getAttribute("data-export");
  var total = parseInt(body.getAttribute("data-items"), 10);
  var storeKey = "sllmx-abtest-" + exportId;
  var state = {judge: "", lang: null, items: {}};
  try {
    var saved = JSON.parse(window.localStorage.getItem(storeKey) || "null");
    if (saved && typeof saved === "object" && saved.items) { state = saved; }
  } catch (e) { /* no storage (private mode): the page still works until it is closed */ }
  var lang = state.lang || document.documentElement.getAttribute("lang");

  function store() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(state)); } catch (e) { /* see above */ }
  }
  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, key) { return String(values[key]); });
  }
  function judged() {
    var done = 0;
    for (var i = 1; i <= total; i++) { if (state.items[i] && state.items[i].judgment) { done++; } }
    return done;
  }
  function showProgress() {
    document.getElementById("progress").textContent = fill(TEXT[lang].progress, {done: judged(), total: total});
  }
  function applyLanguage() {
    document.documentElement.setAttribute("lang", lang);
    var nodes = document.querySelectorAll("[data-t]");
    for (var i = 0; i < nodes.length; i++) { nodes[i].textContent = TEXT[lang][nodes[i].getAttribute("data-t")]; }
    document.title = TEXT[lang].title;
    showProgress();
  }
  function mark(item) {
    var section = document.getElementById("item-" + item);
    if (section) { section.classList.toggle("done", !!(state.items[item] && state.items[item].judgment)); }
  }
  function entry(item) {
    if (!state.items[item]) { state.items[item] = {judgment: "", comment: ""}; }
    return state.items[item];
  }

  // put the stored choices back
  var judgeInput = document.getElementById("judge");
  judgeInput.value = state.judge || "";
  for (var item in state.items) {
    if (!Object.prototype.hasOwnProperty.call(state.items, item)) { continue; }
    var choice = state.items[item];
    var radio = document.getElementById("j-" + item + "-" + choice.judgment);
    if (radio) { radio.checked = true; }
    var note = document.getElementById("c-" + item);
    if (note) { note.value = choice.comment || ""; }
    mark(item);
  }

  document.getElementById("form").addEventListener("change", function (event) {
    var target = event.target;
    if (target.type === "radio") {
      var item = target.getAttribute("data-item");
      entry(item).judgment = target.value;
      mark(item);
      store();
      showProgress();
    }
  });
  document.getElementById("form").addEventListener("input", function (event) {
    var target = event.target;
    if (target.tagName === "TEXTAREA") {
      entry(target.getAttribute("data-item")).comment = target.value;
      store();
    }
  });
  judgeInput.addEventListener("input", function () { state.judge = judgeInput.value; store(); });
  document.getElementById("lang").addEventListener("click", function () {
    lang = lang === "ko" ? "en" : "ko";
    state.lang = lang;
    store();
    applyLanguage();
  });

  function quote(value) { return '"' + String(value).replace(/"/g, '""') + '"'; }
  document.getElementById("save").addEventListener("click", function () {
    var status = document.getElementById("status");
    var judge = judgeInput.value.trim();
    if (!judge) {
      status.className = "warn";
      status.textContent = TEXT[lang].need_name;
      judgeInput.focus();
      return;
    }
    var lines = [["item", "judgment", "judge", "comment", "export"].join(",")];
    for (var i = 1; i <= total; i++) {
      var choice = state.items[i];
      if (choice && choice.judgment) {
        lines.push([String(i), choice.judgment, quote(judge), quote(choice.comment || ""), exportId].join(","));
      }
    }
    var csv = "\ufeff" + lines.join("\r\n") + "\r\n";
    var name = "judgments-" + judge.replace(/[\\\/:*?"<>|\s\u0000-\u001f]+/g, "_") + ".csv";
    var url = window.URL.createObjectURL(new Blob([csv], {type: "text/csv;charset=utf-8"}));
    var link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    document.body.removeChild(link);
    window.setTimeout(function () { window.URL.revokeObjectURL(url); }, 10000);
    status.className = "";
    status.textContent = fill(TEXT[lang].saved, {file: name, done: judged(), total: total});
  });

  applyLanguage();
})();
"""


def _script_json(obj: Any) -> str:
    """JSON to put inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped, so no text ends it."""
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_page(items: Sequence[dict[str, Any]], export_id: str, lang: str = "en") -> str:
    """The judges' page.

    Args:
        items: one dict per item, in page order: ``item`` (its number, 1…n), ``question``, ``answer_A``,
            ``answer_B`` and ``reference`` (None: not shown).
        export_id: the export's id (the key's ``export_id``): the page's storage key and the CSV's ``export``.
        lang: the language shown first, ``en`` or ``ko`` (the toggle switches; the judge's choice is kept).
    """
    t, e = TEXT[lang], html.escape
    total = len(items)
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
        'script-src \'unsafe-inline\'; img-src data:; form-action \'none\'">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{e(t['title'])}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        f'<body data-export="{e(export_id)}" data-items="{total}">',
        "<header>",
        '<div class="bar">',
        f'<h1 data-t="title">{e(t["title"])}</h1>',
        f'<label for="judge" data-t="judge">{e(t["judge"])}</label>',
        '<input id="judge" name="judge" type="text" autocomplete="name" size="16">',
        f'<span id="progress" aria-live="polite">{e(t["progress"].format(done=0, total=total))}</span>',
        f'<button type="button" id="save" data-t="save">{e(t["save"])}</button>',
        f'<button type="button" id="lang" data-t="switch">{e(t["switch"])}</button>',
        "</div>",
        '<p id="status" role="status"></p>',
        "</header>",
        "<main>",
        f'<p class="intro" data-t="intro">{e(t["intro"])}</p>',
        '<form id="form" autocomplete="off" onsubmit="return false">',
    ]
    for it in items:
        n = int(it["item"])
        parts += [
            f'<section class="item" id="item-{n}">',
            f'<h2><span data-t="item">{e(t["item"])}</span> {n}</h2>',
            f'<div class="question"><h3 data-t="question">{e(t["question"])}</h3>'
            f'<p class="text">{e(str(it["question"]))}</p></div>',
        ]
        if it.get("reference") is not None:
            parts.append(f'<div class="reference"><h3 data-t="reference">{e(t["reference"])}</h3>'
                         f'<p class="text">{e(str(it["reference"]))}</p></div>')
        parts.append('<div class="answers">')
        for side in ("A", "B"):
            parts.append(f'<div class="answer" id="answer-{n}-{side}"><h3 data-t="answer_{side}">'
                         f'{e(t["answer_" + side])}</h3><p class="text">{e(str(it["answer_" + side]))}</p></div>')
        parts += ["</div>", f'<fieldset><legend data-t="which">{e(t["which"])}</legend>']
        for choice in CHOICES:
            parts.append(f'<label><input type="radio" name="j-{n}" id="j-{n}-{choice}" value="{choice}" '
                         f'data-item="{n}"> <span data-t="{choice}">{e(t[choice])}</span></label>')
        parts += ["</fieldset>",
                  f'<label class="comment"><span data-t="comment">{e(t["comment"])}</span>'
                  f'<textarea id="c-{n}" name="c-{n}" rows="2" data-item="{n}"></textarea></label>',
                  "</section>"]
    parts += [
        "</form>",
        "</main>",
        f'<script type="application/json" id="sllmx-text">{_script_json(TEXT)}</script>',
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


#: the first characters that make a spreadsheet read a cell as a formula (OWASP's list)
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A text as a spreadsheet cell: one starting like a formula gets a leading apostrophe, so a spreadsheet
    shows it instead of evaluating it."""
    return "'" + text if text.startswith(_FORMULA) else text


def uncell(text: str) -> str:
    """The text :func:`_cell` was given: its leading apostrophe removed where it added one."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA) else text


def render_items_csv(items: Sequence[dict[str, Any]], export_id: str) -> str:
    """``items.csv``: ``item,question,answer_A,answer_B,judgment,comment,export``, one row per item with the
    last three columns for the judge (``export`` filled in), UTF-8 with a BOM (so Excel reads Korean) and CRLF
    line ends.  A reference answer shown on the page (``--show-reference``) is a ``reference`` column after
    the question."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    with_reference = any(it.get("reference") is not None for it in items)
    writer.writerow(["item", "question", *(["reference"] if with_reference else []), "answer_A", "answer_B",
                     "judgment", "comment", "export"])
    for it in items:
        reference = [_cell(str(it["reference"]))] if with_reference else []
        writer.writerow([it["item"], _cell(str(it["question"])), *reference, _cell(str(it["answer_A"])),
                         _cell(str(it["answer_B"])), "", "", export_id])
    return "\ufeff" + buffer.getvalue()
