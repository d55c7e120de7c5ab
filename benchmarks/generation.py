"""Speed of the dev evaluation's greedy generation (issue 19, item 8) against batched ``model.generate``.

    python benchmarks/generation.py                 # the nine cases below, each its own process (~10 min)

The workload: SmolLM2-135M-Instruct, the built-in task's 32 dev prompts (``data=support_ko``, its system
prompt, chat template, left padding), 128 new tokens, greedy, KV cache, the precision a run on this CPU picks
(bf16 base weights where the CPU has avx512_bf16) except in the -fp32 cases.  The adapter is freshly
initialised (LoRA's B = 0), so every case computes the same function; the time is what differs.

Cases:
  peer                  a plain model (no PEFT), ``model.generate`` in batches of 32: what a user's script does
                        with a merged model
  lora-before           sllmx.generation.generate on the run's PEFT LoRA model as it was before issue 19's item 8:
                        batches of 16, no autocast (``runtime=None``)
  lora                  as a run calls it now: the run's runtime (``torch.autocast`` at its dtype), batches of 32
                        (a bf16 run's LoRA is not merged: the merge would round its update away)
  qlora-before          the QLoRA model (4-bit base), as ``lora-before``
  qlora-4bit            the QLoRA model as a run called it after RESULTS.md section 16: as ``lora``, through the
                        4-bit layers (``sllmx.generation.inference_copy`` switched off)
  qlora-unshared        as ``qlora`` without the shared start (each prompt's system prompt computed in its row)
  qlora                 as a run calls it now: as ``lora``, on a copy with the 4-bit weights dequantised once,
                        the prompts' shared start (the system prompt) computed once (``shared_start``)
  lora-fp32-unmerged    a float32 run's LoRA (fp32 base), ``inference_copy`` switched off
  lora-fp32             a float32 run's LoRA as a run calls it now: merged into a copy
The time of a case includes making the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENV, ROOT, machine, save, table  # noqa: E402

CASES = ["peer", "lora-before", "lora", "qlora-before", "qlora-4bit", "qlora-unshared", "qlora", "lora-fp32-unmerged",
         "lora-fp32"]


def one_case(case: str, adapter_noise: float = 0.0) -> dict:
    """Time one case in this process; returns its row."""
    import torch

    sys.path.insert(0, str(ROOT))
    from sllmx.compose import compose
    from sllmx.generation import generate
    from sllmx.plugins import registry, typed
    from sllmx.runtime import Runtime, decide_precision

    method = "qlora" if case.startswith("qlora") else "lora"
    cfg = compose(["model=smollm2-135m", "logger=none", f"method={method}"])
    reg = registry()
    path = reg.get("model", cfg.model.source).resolve(typed(cfg.model, "model"), os.path.expanduser(cfg.cache_dir))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    # what a run picks here (the -fp32 cases: trainer.precision=fp32)
    runtime = Runtime(precision="fp32" if "-fp32" in case else decide_precision("auto", "cpu")[0])
    from plugins.support_task import generate as task_rows  # the task's own rows (built-in plugin)

    system = [{"role": "system", "content": cfg.data.system}]
    prompts = [system + r["prompt"] for r in task_rows(256, 32, 64, 0)["dev"]]
    before = case.endswith("-before")
    batch = 16 if before else 32
    if case == "peer":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=runtime.compute_dtype).eval()
        tokenizer.padding_side = "left"
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=128, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return {"case": case, "batch": batch, "seconds": round(time.perf_counter() - started, 2)}
    plugin, mcfg = reg.get("method", method), typed(cfg.method, "method")
    model = plugin.wrap(plugin.load_model(path, mcfg, runtime), mcfg, runtime, tokenizer)
    if adapter_noise:  # lora_B away from zero, as after training
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.add_(torch.randn_like(param) * adapter_noise)
    import sllmx.generation

    if case.endswith(("-unmerged", "-4bit")):
        sllmx.generation.inference_copy = lambda model, runtime=None: None
    if before or case.endswith("-unshared"):  # no shared start (sllmx.generation.shared_start)
        sllmx.generation._cache_kwarg = lambda model: None
    started = time.perf_counter()
    answers = generate(model, tokenizer, prompts, 128, batch, runtime=None if before else runtime, progress=False)
    return {"case": case, "batch": batch, "seconds": round(time.perf_counter() - started, 2),
            "precision": runtime.precision, "answers": len(answers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=CASES, help="run one case in this process (used by the driver)")
    p.add_argument("--only", nargs="+", choices=CASES, default=CASES)
    p.add_argument("--name", default="generation-support_ko")
    p.add_argument("--adapter-noise", type=float, default=0.0,
                   help="add N(0, this) to the adapter's lora_B weights, as after training (0: a fresh adapter)")
    a = p.parse_args()
    if a.case:
        print(json.dumps(one_case(a.case, a.adapter_noise)), flush=True)
        return
    rows = []
    for case in a.only:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--adapter-noise", str(a.adapter_noise)],
                             capture_output=True, text=True,
                             env={**os.environ, **ENV}, cwd=ROOT)
        if out.returncode:
            sys.exit(f"{case} failed:\n{out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    peer = next((r["seconds"] for r in rows if r["case"] == "peer"), None)
    for r in rows:
        r["vs_peer"] = round(r["seconds"] / peer, 2) if peer else None
    print(table(rows, [("case", "case", "{}"), ("batch", "batch", "{}"), ("seconds", "s for 32 answers", "{:.1f}"),
                       ("vs_peer", "× peer time", "{:.2f}")]))
    save(a.name, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
