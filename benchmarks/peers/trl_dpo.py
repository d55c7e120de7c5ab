"""A hand-written TRL DPO (or ORPO, KTO) script: the peer sllmx's preference objectives are measured against
(benchmarks/preference.py).

What a user writes from TRL's documentation: ``DPOTrainer`` + ``DPOConfig`` + a PEFT ``LoraConfig`` on a
JSONL file of conversational ``prompt`` / ``chosen`` / ``rejected`` rows (here: the split sllmx itself trains
on, written by ``python -m sllmx.data check ... --write-splits``); the reference model is the base with the
adapter switched off (TRL's way with PEFT); evaluated once on the dev file after training.  ``--objective orpo``
uses ``trl.experimental.orpo``'s ORPOTrainer on the same rows, ``--objective kto`` ``KTOTrainer`` on unpaired
``prompt`` / ``completion`` / ``label`` rows.  The flags set what sllmx sets, so the two train the same model on
the same batches.  Writes ``result.json`` into ``--out``.

    python benchmarks/peers/trl_dpo.py --model DIR --train train.jsonl --dev dev.jsonl --out OUT --max-steps 8
"""

import argparse
import json
import time
from pathlib import Path

t_start = time.perf_counter()

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", choices=["dpo", "orpo", "kto"], default="dpo")
    a = p.parse_args()
    if a.objective == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer
    elif a.objective == "kto":
        from trl import KTOConfig as Config, KTOTrainer as Trainer
    else:
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    data = load_dataset("json", data_files={"train": a.train, "dev": a.dev})
    args = Config(
        output_dir=a.out, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.batch_size,
        max_steps=a.max_steps, learning_rate=a.learning_rate, beta=a.beta, max_length=a.max_length, seed=a.seed,
        use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        gradient_checkpointing=a.gradient_checkpointing,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=a.lora_dropout, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    if a.objective == "orpo":  # its batches hold chosen_/rejected_ tensors, no input_ids for Trainer to count
        class Trainer(Trainer):
            def _track_num_input_tokens(self, inputs):
                self.state.num_input_tokens_seen += int(inputs["chosen_attention_mask"].sum()
                                                        + inputs["rejected_attention_mask"].sum())

    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["dev"],
                         processing_class=tokenizer, peft_config=peft_config)
    result = trainer.train()
    dev = trainer.evaluate()
    out = {
        "train_runtime_s": result.metrics["train_runtime"],
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_loss": result.metrics["train_loss"],
        "eval_loss": dev["eval_loss"],
        "eval_rewards/accuracies": dev.get("eval_rewards/accuracies"),
        "steps": trainer.state.global_step,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "script_s": round(time.perf_counter() - t_start, 2),
    }
    Path(a.out, "result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
