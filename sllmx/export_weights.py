"""Writing an export's weights: the adapter as saved, or the merged / full model in a dtype, optionally
quantized by bitsandbytes, verified against the model as trained (logits on dev prompts).

The merge is PEFT's ``merge_and_unload`` (https://huggingface.co/docs/peft/developer_guides/lora#merge-lora-weights-into-the-base-model);
quantization is transformers' ``BitsAndBytesConfig`` with bitsandbytes' own serialisation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from sllmx.errors import SllmxError
from sllmx.model_card import vllm_notes
from sllmx.run_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunInfo, default_device, load_run_model, resolve_base

#: dev prompts (from ``generations.jsonl``) whose logits are compared in the verification
VERIFY_PROMPTS = 4
#: the largest |logit difference| a float32 export may have against the unmerged model, as a share of the largest
#: |logit| (at least 1): float32 rounding of W + BA against W x + B(A x) over SmolLM2's 30 layers gave 1.8e-4 on
#: logits up to 46 (4e-6 of it); the tiny model under 1e-6
MERGE_TOLERANCE = 1e-5

def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prompt_ids(tokenizer: Any, prompts: list[list[dict]]) -> list[Any]:
    """Token ids (1 x n tensors) of each prompt rendered by the chat template with the generation prompt;
    a fixed sentence when the run left no dev prompts."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    if not texts:
        texts = ["The quick brown fox jumps over the lazy dog. 1 2 3 4 5"]
    return [tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"] for t in texts]


def prompt_logits(model: Any, ids: list[Any]) -> list[Any]:
    """float32 logits (n x vocabulary, on the CPU) of ``model`` for each prompt's ids, one at a time (no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for x in ids:
            out.append(model(input_ids=x.to(model.device)).logits[0].float().cpu())
    return out


def max_logit_diff(a: list[Any], b: list[Any]) -> float:
    """The largest absolute difference between two lists of logit tensors (same shapes)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _verification(against: str, diff: float, ids: list[Any]) -> dict[str, Any]:
    return {"against": against, "max_abs_logit_diff": diff, "prompts": len(ids),
            "tokens": int(sum(x.shape[1] for x in ids))}


def _quantization_config(quantize: str, device: str) -> Any:
    """The ``BitsAndBytesConfig`` of ``--quantize``: LLM.int8 (8bit) or NF4 with double quantisation (4bit, QLoRA's
    recipe); compute in bf16 on a GPU that has it, else float32."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def _save_quantized(src: Path, dest: Path, quantize: str, device: str) -> dict[str, Any]:
    """Load the float model at ``src`` through ``BitsAndBytesConfig`` and save it to ``dest`` at once (before any
    forward pass: see the module docstring); return the quantisation config as saved."""
    from transformers import AutoModelForCausalLM

    qconfig = _quantization_config(quantize, device)
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=qconfig, device_map=device)
    model.save_pretrained(str(dest))
    saved = model.config.quantization_config
    del model
    return saved.to_dict() if hasattr(saved, "to_dict") else dict(saved)


def export_adapter(info: RunInfo, tmp: Path, record: dict[str, Any], log: Callable[[str], None]) -> None:
    """The adapter files as the run saved them, the tokenizer, the base reference and vLLM's notes."""
    from transformers import AutoTokenizer

    if not info.mergeable:
        note = (f"{info.record.method} ({info.peft_type}) cannot be merged into the weights: its virtual tokens are "
                f"prepended to the input embeddings; exported as a PEFT adapter with a reference to the base model")
        log(note)
        record["notes"].append(note)
    log(f"copying the {info.adapter_label} adapter from {info.model_dir}")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (info.model_dir / name).is_file():
            raise SllmxError(f"{info.model_dir / name}: missing; the run's adapter is incomplete")
        shutil.copyfile(info.model_dir / name, tmp / name)
    AutoTokenizer.from_pretrained(str(info.model_dir)).save_pretrained(str(tmp))
    path, _ = resolve_base(info)
    record["base"]["path"] = path
    if info.quantized_base:
        bnb = {k: v for k, v in info.record.config["method"].items() if k.startswith("bnb_")}
        record["notes"].append(f"QLoRA: the adapter was trained against the base quantised to 4-bit NF4 "
                               f"(method options {json.dumps(bnb)}); put it on the base loaded the same way "
                               f"(python -m sllmx.chat on the run folder does) to reproduce the run's answers exactly")
    record["vllm"] = vllm_notes(info.adapter, info.quantized_base)
    for note in record["vllm"]:
        log(f"vLLM: {note}")


def export_weights(info: RunInfo, tmp: Path, kind: str, record: dict[str, Any], quantize: Optional[str],
                    dtype: str, verify: bool, log: Callable[[str], None]) -> None:
    """The merged (adapter runs) or re-saved (full fine-tuning) model, optionally quantised, then verified."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(info.model_dir))
    ids = _prompt_ids(tokenizer, info.dev_prompts(VERIFY_PROMPTS)) if verify else []
    trust = bool((info.record.config.get("model") or {}).get("trust_remote_code", False))
    if kind == "merged":
        from peft import PeftModel

        path, kwargs = resolve_base(info)
        record["base"]["path"] = path
        log(f"loading the base model {path} in float32")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu", **kwargs)
        log(f"adding the {info.adapter_label} adapter from {info.model_dir}")
        model = PeftModel.from_pretrained(model, str(info.model_dir))
        model.eval()
        reference = prompt_logits(model, ids) if verify else []
        log("merging the adapter into the weights (merge_and_unload)")
        model = model.merge_and_unload()
        against = "float32 base + the run's adapter (PEFT, unmerged)"
        if info.quantized_base:
            record["notes"].append(
                "QLoRA: merging into the 4-bit base would round the update away, so the adapter is merged into "
                "the base in full precision (float32); the run trained it against the base quantised to 4-bit "
                "NF4, so this model's answers can differ slightly from the run's (see Verification)")
    else:
        log(f"loading the fully fine-tuned model {info.model_dir} in float32")
        model = AutoModelForCausalLM.from_pretrained(str(info.model_dir), dtype=torch.float32, device_map="cpu",
                                                     trust_remote_code=trust)
        model.eval()
        reference = prompt_logits(model, ids) if verify else []
        against = "the run's saved model (float32)"
    gen = model.generation_config
    gen.do_sample, gen.max_new_tokens = False, info.max_new_tokens
    for key in ("temperature", "top_p", "top_k"):  # sampling settings would only draw warnings with do_sample=False
        if hasattr(gen, key):
            setattr(gen, key, None)
    if quantize:
        device = default_device()
        scratch = Path(tempfile.mkdtemp(prefix=".float32-", dir=tmp))
        log(f"saving the float32 model, then quantising it to {quantize} with bitsandbytes on {device}")
        model.save_pretrained(str(scratch))
        del model
        record["quantization_config"] = _save_quantized(scratch, tmp, quantize, device)
        shutil.rmtree(scratch)
    else:
        log(f"saving safetensors in {dtype}")
        model.to(getattr(torch, dtype)).save_pretrained(str(tmp))
        del model
    tokenizer.save_pretrained(str(tmp))
    if not verify:
        return
    log("verifying: reloading the export and comparing logits")
    device = default_device() if quantize else "cpu"
    exported = AutoModelForCausalLM.from_pretrained(str(tmp), device_map=device, trust_remote_code=trust,
                                                    **({} if quantize else {"dtype": "auto"}))
    exported.eval()
    got = prompt_logits(exported, ids)
    del exported
    record["verification"].append(_verification(against, max_logit_diff(got, reference), ids))
    diff = record["verification"][-1]["max_abs_logit_diff"]
    scale = max(float(x.abs().max()) for x in reference)
    record["verification"][-1]["max_abs_logit"] = scale
    if not quantize and dtype == "float32" and diff > MERGE_TOLERANCE * max(1.0, scale):
        # a float32 merge that does not reproduce base + adapter is wrong: no export rather than a bad one
        raise SllmxError(f"the exported model's logits differ from {against} by {diff:.3g} (more than "
                         f"{MERGE_TOLERANCE:g} of the largest logit, {scale:.3g}); nothing was written")
    if info.quantized_base:
        log("verifying against the model as trained (4-bit base + adapter)")
        trained, _ = load_run_model(info, device="cpu")
        record["verification"].append(_verification("the model as trained: the base loaded by the method "
                                                    "(4-bit NF4) + the adapter", max_logit_diff(
                                                        got, prompt_logits(trained, ids)), ids))
        del trained
    for v in record["verification"]:
        log(f"max |logit difference| against {v['against']}: {v['max_abs_logit_diff']:.3g}")
