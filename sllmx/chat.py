"""``python -m sllmx.chat RUN_DIR | EXPORT_DIR | key=value...``: talk to a model before and after fine-tuning.

What it talks to:

- a run folder (``python -m sllmx.chat outputs/2026-12-01/10-00-00-lora-sft``): the run's final model,
  loaded the way the run built it (the base through the method plugin, in the run's precision, with the
  saved adapter; :func:`sllmx.run_folder.load_run_model`);
- an export folder (``python -m sllmx.export ... --out DIR``) or any Hugging Face model folder: the
  model in it (a PEFT adapter folder is put on its base);
- Hydra overrides of ``python -m sllmx`` (``python -m sllmx.chat model=tiny``,
  ``python -m sllmx.chat model=hf model.name_or_path=...``): the base model itself, loaded by the
  method plugin (``method=qlora`` loads it 4-bit), as a run would start from it.

Answers are generated as the run's dev generations are (:func:`sllmx.generation.generate`: the chat
template with the generation prompt, greedy decoding, left padding, ``eval.max_new_tokens``, batches of
``eval.generation_batch_size``), with the run's system prompt (``data.system``) first, so a run's dev
prompts get exactly the answers in its ``generations.jsonl``.

Interactive (the default): each line read from stdin is a user turn; the answer is printed on stdout and
the conversation goes on (the history is kept).  ``/reset`` clears the history, ``/exit`` or end of input
quits.  Batch: ``--input prompts.jsonl`` (rows ``{"prompt": "..."}``, given the system prompt, or
``{"messages": [...]}``, used as they are) and ``--output answers.jsonl`` (each input row with ``answer``
and ``truncated`` added; stdout without ``--output``).  Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from sllmx.plugins import typed
from sllmx.errors import OneLineParser, SllmxError, exit_with, say
from sllmx.run_folder import (ADAPTER_CONFIG, EXPORT_FILE, RunInfo, default_device, load_run_model, read_run,
                              run_runtime)
from sllmx.records import RUN_FILE

#: the answer length when neither the run, the export nor the model's generation config gives one
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 16


@dataclass
class Target:
    """What the command line names, found without loading anything heavy.

    Attributes:
        kind: ``run`` (a run folder), ``folder`` (an export or any Hugging Face model folder) or
            ``base`` (Hydra overrides: a base model).
        label: a readable name for messages.
        max_new_tokens / batch_size / system: the generation settings it comes with (the run's
            ``eval.max_new_tokens``, ``eval.generation_batch_size``, ``data.system``).
        run: the run (``kind == "run"``).  path: the folder (``folder``).  cfg: the composed config (``base``).
        export: the folder's ``sllmx_export.json`` (``{}`` when it has none).
    """

    kind: str
    label: str
    max_new_tokens: Optional[int] = None
    batch_size: int = DEFAULT_BATCH_SIZE
    system: Optional[str] = None
    run: Optional[RunInfo] = None
    path: Optional[Path] = None
    cfg: Any = None
    export: dict[str, Any] = field(default_factory=dict)


def find_target(paths: Sequence[str], overrides: Sequence[str]) -> Target:
    """Resolve the command line's ``RUN_DIR`` / ``EXPORT_DIR`` or ``key=value`` overrides (nothing heavy loaded).

    Raises:
        SllmxError: both a folder and overrides, more than one folder, a missing folder, a folder that is neither
            a run nor a model, a run that is not COMPLETE, or overrides Hydra or the model source refuse.
    """
    if len(paths) > 1:
        raise SllmxError(f"give one run or model folder, not {len(paths)}: {' '.join(paths)}")
    if paths and overrides:
        raise SllmxError(f"{paths[0]} with {' '.join(overrides)}: overrides (key=value) choose a base model and "
                         f"cannot change a run's or an export's model; give one or the other")
    if paths:
        path = Path(paths[0])
        if not path.exists():
            raise SllmxError(f"{path}: no such run or model folder")
        if (path / RUN_FILE).is_file() or path.name == RUN_FILE:
            info = read_run(path)
            return Target(kind="run", label=f"the run {info.path} ({info.record.method}/{info.record.trainer})",
                          max_new_tokens=info.max_new_tokens, batch_size=info.generation_batch_size,
                          system=info.system, run=info)
        if not path.is_dir() or not ((path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()):
            raise SllmxError(f"{path}: neither a run folder ({RUN_FILE}) nor a model folder (config.json or "
                             f"{ADAPTER_CONFIG})")
        export: dict[str, Any] = {}
        if (path / EXPORT_FILE).is_file():
            export = json.loads((path / EXPORT_FILE).read_text(encoding="utf-8"))
        gen = export.get("generation") or {}
        return Target(kind="folder", label=f"the model in {path}", path=path, export=export,
                      max_new_tokens=gen.get("max_new_tokens"), batch_size=int(gen.get("batch_size") or
                                                                               DEFAULT_BATCH_SIZE),
                      system=gen.get("system"))
    from sllmx.compose import compose
    from sllmx.plugins import registry

    cfg = compose(list(overrides))
    reason = registry().get("model", cfg.model.source).check(typed(cfg.model, "model"))
    if reason:
        raise SllmxError(reason)
    registry().get("method", cfg.method.name)  # an unknown method fails now
    from sllmx.model_card import base_label
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    return Target(kind="base", label=f"the base model {base_label(model)} (before fine-tuning)", cfg=cfg,
                  max_new_tokens=int(cfg.eval.max_new_tokens), batch_size=int(cfg.eval.generation_batch_size),
                  system=cfg.data.get("system") or None)


@dataclass
class Chatter:
    """A loaded model with the settings its answers are generated with (see :meth:`answer`)."""

    model: Any
    tokenizer: Any
    label: str
    max_new_tokens: int
    batch_size: int
    system: Optional[str]
    #: the precision answers are generated at (:func:`sllmx.generation.generate`): a run's, or the base model's as
    #: a run would start from it; None (a model folder): as loaded, no autocast
    runtime: Optional[Any] = None

    def conversation(self, turns: list[dict]) -> list[dict]:
        """``turns`` with the system prompt first (when there is one and ``turns`` has none)."""
        if self.system and not (turns and turns[0].get("role") == "system"):
            return [{"role": "system", "content": self.system}, *turns]
        return list(turns)

    def answer(self, conversations: list[list[dict]], truncated: Optional[list[bool]] = None) -> list[str]:
        """Greedy answers to message lists, one per conversation (:func:`sllmx.generation.generate`: chat
        template with the generation prompt, left padding, ``batch_size`` per call, at most
        ``max_new_tokens`` new tokens, special tokens removed, stripped).  ``truncated``, when given, is
        extended with one flag per answer: True when it reached ``max_new_tokens`` without ending."""
        from sllmx.generation import generate

        # a bar over a batch file's prompts; none for one interactive answer
        return generate(self.model, self.tokenizer, conversations, self.max_new_tokens, self.batch_size, truncated,
                        runtime=self.runtime, progress=len(conversations) > 1)


def _load_folder(target: Target, device: str) -> tuple[Any, Any]:
    """The model in an export or Hugging Face folder: a full / merged / quantised model as saved, or a PEFT
    adapter on its base (the export's recorded base, its hub id, else ``base_model_name_or_path``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = target.path
    assert path is not None
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        adapter = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base_info = target.export.get("base") or {}
        candidates = [base_info.get("path"), base_info.get("hub_id"), adapter.get("base_model_name_or_path")]
        base = next((c for c in candidates if c and (os.path.isdir(c) or not os.path.isabs(c))), None)
        if base is None:
            raise SllmxError(f"{path}: the adapter's base model {candidates[0] or candidates[2]} is not here; "
                             f"export the run again on this machine or put the base at that path")
        say(f"loading the base model {base}")
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", device_map=device)
        model = PeftModel.from_pretrained(model, str(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", device_map=device)
    model.eval()
    if target.max_new_tokens is None:
        target.max_new_tokens = getattr(model.generation_config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
    return model, tokenizer


def _load_base(target: Target, device: str) -> tuple[Any, Any, Any]:
    """The base model of a composed config, loaded by its method plugin as a run would start from it:
    ``(model, tokenizer, runtime)``."""
    from transformers import AutoTokenizer

    from sllmx.plugins import registry
    from sllmx.runtime import Runtime, decide_precision

    cfg = target.cfg
    reg = registry()
    source = reg.get("model", cfg.model.source)
    path = source.resolve(typed(cfg.model, "model"), os.path.expanduser(str(cfg.cache_dir)))
    kwargs = source.from_pretrained_kwargs(typed(cfg.model, "model"))
    precision, reason = decide_precision(str(cfg.trainer.get("precision", "auto")), device)
    runtime = Runtime(device=device, precision=precision, precision_reason=reason)
    say(f"loading {path} ({precision}: {reason})")
    model = reg.get("method", cfg.method.name).load_model(path, typed(cfg.method, "method", reg), runtime, **kwargs)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path, **kwargs), runtime


def load_chatter(target: Target, max_new_tokens: Optional[int] = None, batch_size: Optional[int] = None,
                 system: Optional[str] = None, device: Optional[str] = None) -> Chatter:
    """Load the model :func:`find_target` named; explicit settings override the target's.

    Args:
        system: the system prompt; None keeps the target's, ``""`` drops it.
        device: default :func:`sllmx.run_folder.default_device`.
    """
    device = device or default_device()
    say(f"loading {target.label}")
    runtime = None
    if target.kind == "run":
        assert target.run is not None
        model, tokenizer = load_run_model(target.run, device)
        runtime = run_runtime(target.run, device)
        from sllmx.generation import inference_copy

        # made once here, as the run's evaluations make it for each generation: the same answers
        faster = inference_copy(model, runtime)
        model = faster if faster is not None else model
    elif target.kind == "folder":
        model, tokenizer = _load_folder(target, device)
    else:
        model, tokenizer, runtime = _load_base(target, device)
    return Chatter(model=model, tokenizer=tokenizer, label=target.label,
                   max_new_tokens=int(max_new_tokens or target.max_new_tokens or DEFAULT_MAX_NEW_TOKENS),
                   batch_size=int(batch_size or target.batch_size),
                   system=target.system if system is None else (system or None), runtime=runtime)


def read_prompts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a prompts file (``{"prompt": str}`` or ``{"messages": [{"role", "content"}, ...]}`` per
    row; JSONL with blank lines skipped, or any file :func:`sllmx.data.readers.read_file` reads).

    Raises:
        SllmxError: a missing or malformed file, or a row without a usable ``prompt`` / ``messages``,
            naming the file, line and field.
    """
    from sllmx.data.readers import read_file

    if not Path(path).is_file():
        raise SllmxError(f"--input {path}: no such file")
    split = read_file(str(path))
    for n, row in enumerate(split.rows):
        where = f"{path}, {split.line_of(n)}"
        if "messages" in row:
            msgs = row["messages"]
            if not (isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs)):
                raise SllmxError(f"{where}: field 'messages' must be a non-empty list of "
                                 f"{{\"role\": str, \"content\": str}}")
        elif not (isinstance(row.get("prompt"), str) and row["prompt"].strip()):
            raise SllmxError(f"{where}: field 'prompt' is missing or not a non-empty string "
                             f"(give 'prompt' or 'messages')")
    if not split.rows:
        raise SllmxError(f"--input {path}: no prompts in it")
    return split.rows


def answer_rows(chatter: Chatter, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``answer`` and ``truncated`` added: a ``prompt`` gets the system prompt first, ``messages``
    are used as they are."""
    conversations = [list(r["messages"]) if "messages" in r else
                     chatter.conversation([{"role": "user", "content": r["prompt"]}]) for r in rows]
    cut: list[bool] = []
    answers = chatter.answer(conversations, cut)
    return [{**r, "answer": a, "truncated": t} for r, a, t in zip(rows, answers, cut)]


def interactive(chatter: Chatter, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                prompt: Optional[bool] = None) -> int:
    """The chat loop: each line of ``stdin`` is a user turn, its answer goes to ``stdout`` (one write per answer);
    the history is kept.  ``/reset`` clears it, ``/exit`` (or ``/quit``) or end of input ends the loop.

    Args:
        prompt: print ``> `` before each turn; default: when ``stdin`` is a terminal.

    Returns:
        the exit status (0).
    """
    if prompt is None:
        prompt = stdin.isatty()
    history: list[dict] = []
    while True:
        if prompt:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            say("history cleared")
            continue
        turns = [*history, {"role": "user", "content": text}]
        cut: list[bool] = []
        answer = chatter.answer([chatter.conversation(turns)], cut)[0]
        stdout.write(answer + "\n")
        stdout.flush()
        if cut[0]:
            say(f"(the answer reached {chatter.max_new_tokens} new tokens; --max-new-tokens for more)")
        history = [*turns, {"role": "assistant", "content": answer}]
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``python -m sllmx.chat``); returns the exit status (2 on bad input)."""
    from sllmx.atomic import write_text_atomic

    parser = OneLineParser(prog="python -m sllmx.chat", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("target", nargs="*", metavar="RUN_DIR|EXPORT_DIR|key=value",
                        help="a run folder, an export / Hugging Face model folder, or python -m sllmx overrides "
                             "choosing a base model (e.g. model=tiny); none: the default config's base model")
    parser.add_argument("--input", metavar="PROMPTS.jsonl",
                        help='batch mode: rows {"prompt": "..."} or {"messages": [...]}')
    parser.add_argument("--output", metavar="ANSWERS.jsonl",
                        help="batch mode: where the rows with their answers go (must not exist; default stdout)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="default: the run's eval.max_new_tokens")
    parser.add_argument("--batch-size", type=int, metavar="N", help="default: the run's eval.generation_batch_size")
    parser.add_argument("--system", metavar="TEXT",
                        help='the system prompt; default: the run\'s data.system; "" for none')
    args = parser.parse_args(argv)
    try:
        if args.output and not args.input:
            raise SllmxError("--output needs --input (the prompts to answer)")
        if args.output and Path(args.output).exists():
            raise SllmxError(f"--output {args.output}: the file exists; nothing is overwritten")
        for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
            if value is not None and value < 1:
                raise SllmxError(f"{flag} {value}: must be at least 1")
        paths = [t for t in args.target if "=" not in t and not t.startswith(("+", "~"))]
        overrides = [t for t in args.target if t not in paths]
        rows = read_prompts(args.input) if args.input else None
        target = find_target(paths, overrides)
        chatter = load_chatter(target, args.max_new_tokens, args.batch_size, args.system)
        if rows is not None:
            say(f"answering {len(rows)} prompts (greedy, at most {chatter.max_new_tokens} new tokens)")
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in answer_rows(chatter, rows))
            if args.output:
                write_text_atomic(Path(args.output), text)
                say(f"wrote {args.output}")
            else:
                sys.stdout.write(text)
            return 0
        say(f"chatting with {chatter.label}: greedy, at most {chatter.max_new_tokens} new tokens, "
            f"{'the system prompt of data.system' if chatter.system else 'no system prompt'}. "
            f"/reset clears the history, /exit quits.")
        return interactive(chatter)
    except SllmxError as exc:
        exit_with(exc)
    except KeyboardInterrupt:
        sys.stderr.write("\nsllmx: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
