"""The model card (``README.md`` in the Hugging Face format) and the vLLM notes of an export.

Card format: https://huggingface.co/docs/hub/model-cards (YAML front matter: ``base_model``,
``library_name``, ``tags``, ``pipeline_tag``).  vLLM's LoRA limits: vllm/config/lora.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any, Optional

from sllmx.records import RunRecord
from sllmx.run_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROMPT_LEARNING, RunInfo

#: vLLM's allowed ``--max-lora-rank`` values and its default (vllm/config/lora.py, ``MaxLoRARanks`` and
#: ``LoRAConfig.max_lora_rank``, v0.26 and later)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16


def vllm_notes(adapter: dict[str, Any], quantized_base: bool = False) -> list[str]:
    """What serving this adapter with vLLM's multi-LoRA (``--enable-lora --lora-modules NAME=DIR``) needs,
    one line per limit that applies.  Sources: vLLM's ``vllm/config/lora.py`` (``max_lora_rank`` default
    16, allowed ``1, 8, 16, 32, 64, 128, 256, 320, 512``), vllm-project/vllm#6983 and #10849 (DoRA's
    ``lora_magnitude_vector`` is not a supported LoRA weight; a DoRA PR, #47395, is open), vLLM's
    ``ValueError: vLLM only supports modules_to_save being None`` (hiyouga/LlamaFactory#9545, vLLM
    0.10), vllm-project/vllm#5733 (bias terms need ``--enable-lora-bias``), and the prompt-adapter support
    of vllm-project/vllm#4645, dropped by v0.10 (opendatahub-io/vllm-tgis-adapter#269).

    Returns:
        the notes (empty: nothing beyond ``--enable-lora`` is needed).
    """
    peft_type = adapter.get("peft_type")
    if peft_type in PROMPT_LEARNING:
        return [f"{peft_type} adapter: vLLM's LoRA serving does not load it (its prompt-adapter support was "
                f"removed by v0.10); serve it with transformers + peft (python -m sllmx.chat DIR)"]
    if peft_type != "LORA":
        return [f"{peft_type} adapter: vLLM's multi-LoRA serves LoRA adapters only; export it merged instead"]
    notes = []
    rank = int(adapter.get("r") or 0)
    ranks = [int(v) for v in (adapter.get("rank_pattern") or {}).values()]
    top = max([rank, *ranks])
    if top > VLLM_DEFAULT_MAX_LORA_RANK:
        allowed = next((r for r in VLLM_LORA_RANKS if r >= top), None)
        notes.append(f"rank {top} > vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_LORA_RANK}: start vLLM with "
                     f"--max-lora-rank {allowed}" if allowed else
                     f"rank {top} exceeds vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}: export merged")
    if adapter.get("use_dora"):
        notes.append("DoRA (use_dora=true): vLLM's LoRA layers have no magnitude vector "
                     "(lora_magnitude_vector is an unsupported LoRA weight, vllm#6983); export merged instead")
    if adapter.get("modules_to_save"):
        notes.append(f"modules_to_save={adapter['modules_to_save']}: vLLM only supports modules_to_save being None")
    if adapter.get("bias") not in (None, "none") or adapter.get("lora_bias"):
        notes.append("trained bias terms: vLLM needs --enable-lora-bias for them (vllm#5733)")
    targets = adapter.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    odd = sorted({t.split(".")[-1] for t in targets if t.split(".")[-1] in ("lm_head", "embed_tokens")})
    if odd:
        notes.append(f"LoRA on {', '.join(odd)}: vLLM's support for LoRA on embeddings / the output head depends "
                     f"on the model class; check it, or export merged")
    if quantized_base:
        notes.append("QLoRA: the adapter was trained against the 4-bit NF4 base; on a base in full precision "
                     "its answers differ slightly from the run's (the merged export records how much)")
    return notes




def hub_id(model: dict[str, Any]) -> Optional[str]:
    """The base model's Hugging Face hub id, when the run loaded it from the hub (``model=hf``)."""
    name = model.get("name_or_path")
    if model.get("source") != "hf" or not isinstance(name, str):
        return None
    if os.path.exists(name) or name.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    return name


def base_label(model: dict[str, Any]) -> str:
    """A readable name of the base model from run.json ``model`` (hub id, preset name, file, or source)."""
    if model.get("name_or_path"):
        return str(model["name_or_path"])
    if model.get("name"):
        return str(model["name"])
    if model.get("path"):
        return os.path.basename(str(model["path"]))
    if model.get("package"):
        return f"{model.get('file')} from the package {model['package']}"
    return f"{model.get('source', '?')} model"


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return "n/a" if value is None else str(value)


def best_step_metrics(record: RunRecord) -> dict[str, float]:
    """The dev evaluation at the best step (the saved model's), its ``eval_*`` values (timings left out)."""
    dm = record.dev_metric
    hist = dm.history
    row = next((h for h in hist[1:] if h["step"] == dm.best_step), hist[-1] if hist else None)
    metrics = (row or {}).get("metrics") or {}
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))
            and not k.endswith(("runtime", "per_second", "preparation_time", "num_tokens"))}


def command_of(info: RunInfo) -> Optional[str]:
    """The ``python -m sllmx ...`` command that reproduces the run (Hydra's overrides), None when unknown."""
    if info.overrides is None:
        return None
    return " ".join(["python -m sllmx", *(shlex.quote(o) for o in info.overrides)])


def model_card(info: RunInfo, kind: str, export: dict[str, Any]) -> str:
    """The exported folder's ``README.md``: a Hugging Face model card (YAML front matter, then Markdown)
    with the run's method, base model, data hashes, dev and test metrics, the command, the verification
    and how to load or serve the export.

    Args:
        kind: ``merged``, ``adapter`` or ``full`` (:func:`plan_export`).
        export: the export record (``sllmx_export.json``'s content, verification included).
    """
    import yaml

    rec = info.record
    cfg = rec.config
    hub = hub_id(rec.model)
    quant = export.get("quantize")
    tags = ["sllmx", rec.method, rec.trainer]
    if kind == "adapter":
        tags += ["peft", *(["lora"] if info.peft_type == "LORA" else [])]
    if quant:
        tags += ["bitsandbytes", quant]
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "peft" if kind == "adapter" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = list(dict.fromkeys(tags))
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()

    base = base_label(rec.model)
    lines = ["---", front, "---", "",
             f"# {rec.method} / {rec.trainer} fine-tune of {base}", "",
             f"Exported by `python -m sllmx.export` from the run `{info.path}` "
             f"(status {rec.status}, finished {rec.finished_at}).", ""]
    lines += ["## What this folder holds", ""]
    if kind == "merged":
        lines.append(f"The base model with the run's {info.adapter_label} adapter merged into its weights "
                     f"(`peft` `merge_and_unload`, in float32), saved as safetensors in {export['dtype']} with the "
                     f"tokenizer and its chat template. `transformers` loads it alone; PEFT is not needed.")
    elif kind == "full":
        lines.append(f"The fully fine-tuned model as the run saved it, re-saved as safetensors in {export['dtype']} "
                     f"with the tokenizer and its chat template.")
    else:
        lines.append(f"The run's PEFT {info.adapter_label} adapter (`{ADAPTER_CONFIG}`, `{ADAPTER_WEIGHTS}`, byte for "
                     f"byte as the run saved it) and the tokenizer with its chat template. The base model is not "
                     f"included: load `{base}` and put the adapter on it (below).")
    for note in export.get("notes", []):
        lines.append(f"\n- {note}")
    if quant:
        lines.append(f"\nQuantised to {quant} with bitsandbytes (`BitsAndBytesConfig` "
                     f"{json.dumps(export.get('quantization_config') or {}, sort_keys=True)}); loading needs "
                     f"`bitsandbytes`.")
    lines += ["", "Base model: " + (f"[`{hub}`](https://huggingface.co/{hub})" if hub else f"`{base}`")
              + f" (run.json `model`: `{json.dumps(rec.model, ensure_ascii=False, sort_keys=True)}`). "
              "Licence: not recorded by the run; the base model's licence applies.", ""]

    lines += ["## Training", "", "| | |", "|---|---|",
              f"| method | {rec.method} |", f"| objective | {rec.trainer} |", f"| seed | {rec.seed} |",
              f"| optimizer steps | {_fmt(rec.global_steps)} |",
              f"| precision | {(rec.precision or {}).get('dtype', 'n/a')} |",
              f"| trainable parameters | {_fmt(rec.trainable_params)} of {_fmt(rec.total_params)} |",
              f"| train tokens | {_fmt(rec.train_tokens)} |", f"| wall time (s) | {_fmt(rec.wall_time_s)} |"]
    method_opts = {k: v for k, v in (cfg.get("method") or {}).items() if k != "name"}
    trainer_cfg = cfg.get("trainer") or {}
    trainer_keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "max_length", "beta", "loss_type", "lr_scheduler_type")
    trainer_opts = {k: trainer_cfg[k] for k in trainer_keys if k in trainer_cfg}
    lines += [f"| method options | `{json.dumps(method_opts, ensure_ascii=False)}` |",
              f"| trainer options | `{json.dumps(trainer_opts, ensure_ascii=False)}` |", ""]

    data = rec.data or {}
    lines += ["## Data", "",
              f"Source `{data.get('source', 'n/a')}`, format `{data.get('format', 'n/a')}`, layout "
              f"`{'/'.join(data.get('layout') or [])}`. `sha256` hashes the canonical JSON of each split's converted "
              f"examples in order (run.json `data.splits`): equal hashes mean the same data.", "",
              "| split | origin | rows | sha256 |", "|---|---|---|---|"]
    for split, prov in (data.get("splits") or {}).items():
        lines.append(f"| {split} | `{prov.get('origin')}` | {prov.get('rows')} | `{prov.get('sha256')}` |")
    lines.append("")

    dm = rec.dev_metric
    direction = "higher" if dm.higher_is_better else "lower"
    lines += ["## Results", "",
              f"Dev metric `{dm.name}` ({direction} is better): before training {_fmt(dm.baseline)}, best "
              f"{_fmt(dm.best)} at step {_fmt(dm.best_step)} (the exported model), final {_fmt(dm.final)}.", ""]
    best = best_step_metrics(rec)
    if best:
        lines += ["| dev metric at the best step | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(best.items())]
        lines.append("")
    if rec.test_metrics:
        lines += ["| test metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(rec.test_metrics.items())]
    else:
        lines.append("Not evaluated on a test split (the run had `eval.test=false`).")
    lines.append("")

    lines += ["## Command", ""]
    command = command_of(info)
    if command:
        trial = f" (trial {rec.trial['number']} of the sweep `{rec.trial['study_name']}`)" if rec.trial else ""
        lines += [f"The run{trial}, as Hydra recorded its overrides (`.hydra/overrides.yaml`):", "", "```bash",
                  command, "```"]
    else:
        lines.append("Not recorded: the run folder has no `.hydra/overrides.yaml` (it was not started by "
                     "`python -m sllmx`). The resolved config below reproduces it.")
    versions = rec.versions or {}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
              + (f"; run from the git checkout {rec.git_commit}" if rec.git_commit and rec.git_commit not in
                 str(versions.get("sllmx")) else "") + ".", ""]

    verification = export.get("verification") or []
    if verification:
        lines += ["## Verification", "",
                  "Logits of this export (reloaded from disk) against a reference, on the run's first dev prompts "
                  "(chat template with the generation prompt):", "",
                  "| reference | prompts | tokens | max abs logit difference |", "|---|---|---|---|"]
        lines += [f"| {v['against']} | {v['prompts']} | {v['tokens']} | {v['max_abs_logit_diff']:.3g} |"
                  for v in verification]
        lines.append("")

    gen = export.get("generation") or {}
    lines += ["## Use", "",
              f"Greedy decoding and at most {gen.get('max_new_tokens')} new tokens reproduce the run's dev "
              f"generations" + (f"; the run's system prompt was: {json.dumps(gen.get('system'), ensure_ascii=False)}"
                                if gen.get("system") else "") + ".", "", "```python"]
    if kind == "adapter":
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = AutoModelForCausalLM.from_pretrained({json.dumps(hub or export['base'].get('path'))})",
                  'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")']
    lines += ['messages = [{"role": "user", "content": "..."}]',
              "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              f"out = model.generate(**ids, max_new_tokens={gen.get('max_new_tokens')}, do_sample=False)",
              "print(tokenizer.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))", "```", "",
              "Or interactively: `python -m sllmx.chat THIS_FOLDER`.", ""]
    if kind == "adapter":
        notes = export.get("vllm") or []
        lines += ["### Serving with vLLM (multi-LoRA)", ""]
        if info.peft_type == "LORA":
            lines.append("`vllm serve BASE --enable-lora --lora-modules NAME=THIS_FOLDER`"
                         + (" needs:" if notes else ": no further limits apply (rank, DoRA, modules_to_save and "
                                                    "bias checked against vLLM's limits, see sllmx's docs/export.md)."))
        lines += [f"- {n}" for n in notes]
        lines.append("")
    else:
        lines += ["### GGUF (llama.cpp)", "",
                  "No PyPI package writes GGUF; llama.cpp's converter does (see sllmx's docs/export.md): "
                  "`python convert_hf_to_gguf.py THIS_FOLDER --outfile model.gguf --outtype q8_0`"
                  + (" (needs an unquantised export: bitsandbytes weights are not read by it)." if quant else "."), ""]

    lines += ["<details><summary>The run's resolved config (run.json <code>config</code>)</summary>", "", "```yaml",
              yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)
