"""python -m sllmx.export: merged, adapter, quantised, prompt-tuning and full exports of tiny runs; the model
card; refusals before torch loads.  The runs are made once per test session (``make_run``; test_chat uses them
too)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sllmx.errors import SllmxError
from sllmx.export import check_quantize_available, export, main
from sllmx.model_card import hub_id, vllm_notes
from sllmx.run_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_FILE, read_run, resolve_base
from sllmx.records import RunRecord
from tests.common import FAST, ROOT, compose_config

#: per method: settings that make a few steps change the tiny model visibly (the LoRA run's answers are not
#: all empty) and put the best checkpoint at the last step, so the saved model wrote generations.jsonl
RUN_SETTINGS = {
    "lora": ["trainer.learning_rate=0.01", "trainer.max_steps=12", "eval.eval_steps=6", "eval.test=true"],
    "dora": ["trainer.learning_rate=0.01"],
    "qlora": ["trainer.learning_rate=0.01"],
    "prompt_tuning": ["trainer.learning_rate=0.05"],
    "full": ["trainer.learning_rate=0.001"],
}
_RUNS: dict = {}


def make_run(method: str, tmp_path_factory) -> Path:
    """A COMPLETE tiny run of ``method`` (made once per session), with the ``.hydra/overrides.yaml`` Hydra
    would have written for ``python -m sllmx <overrides>``."""
    root = tmp_path_factory.getbasetemp() / "sllmx-runs"
    if (root / method / ".hydra" / "overrides.yaml").exists():  # made by this session (pytest may import this
        _RUNS[method] = root / method                             # module twice: as a test and from test_chat)
    if method not in _RUNS:
        from sllmx.run import run

        overrides = [*FAST, f"method={method}", *RUN_SETTINGS[method]]
        record = run(compose_config(overrides, root / method, root / "cache"))
        assert record.status == "COMPLETE"
        assert record.dev_metric.best_step == record.global_steps  # the saved model made generations.jsonl
        (root / method / ".hydra").mkdir()
        (root / method / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
        _RUNS[method] = root / method
    return _RUNS[method]


@pytest.fixture
def runs(tmp_path_factory):
    return lambda method: make_run(method, tmp_path_factory)


def dev_rows(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()]


def conversation_logits(model, tokenizer, rows):
    """Logits of each dev conversation (prompt + reference answer), right-padded in one batch, at real tokens."""
    import torch

    texts = [tokenizer.apply_chat_template(r["input"] + [{"role": "assistant", "content": r["reference"]}],
                                           tokenize=False) for r in rows]
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits
    return logits[enc["attention_mask"].bool()]


def adapter_vs_export(run_dir: Path, out: Path) -> float:
    """max |logit difference| between the base in float32 + the run's adapter (PeftModel) and the exported model
    loaded with plain AutoModelForCausalLM, over every token of the dev conversations."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = resolve_base(read_run(run_dir))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                          str(run_dir / "model")).eval()
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(exported).__name__ == "LlamaForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    rows = dev_rows(run_dir)
    return float((conversation_logits(reference, tokenizer, rows) - conversation_logits(exported, tokenizer, rows))
                 .abs().max())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_export_equals_base_plus_adapter(method, runs, tmp_path):
    run_dir = runs(method)
    out = tmp_path / "merged"
    assert main([str(run_dir), "--out", str(out)]) == 0

    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", EXPORT_FILE} <= names
    assert ADAPTER_CONFIG not in names and ADAPTER_WEIGHTS not in names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary folder was renamed
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["kind"] == "merged" and record["run"]["method"] == method
    assert record["verification"][0]["max_abs_logit_diff"] < 1e-4
    assert record["files"]["model.safetensors"]["sha256"]
    diff = adapter_vs_export(run_dir, out)
    print(f"{method}: max |logit(base + adapter) - logit(merged export)| = {diff:.3g}")
    assert diff < 1e-4


NO_PEFT = textwrap.dedent("""
    import json, sys
    sys.modules["peft"] = None    # PEFT and sllmx unimportable, as if not installed
    sys.modules["sllmx"] = None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, generations = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(generations, encoding="utf-8") if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    texts = [tokenizer.apply_chat_template(r["input"], add_generation_prompt=True, tokenize=False) for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():  # greedy, max_new_tokens: the export's generation_config.json
        new = model.generate(**enc, pad_token_id=tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]
    answers = [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    print(json.dumps({"answers": answers, "class": type(model).__name__,
                      "peft": [m for m in sys.modules if m.startswith("peft") and sys.modules[m] is not None]}))
""")


def test_merged_lora_gives_the_runs_dev_answers_without_peft(runs, tmp_path):
    run_dir = runs("lora")
    out = tmp_path / "merged"
    export(run_dir, out)
    script = tmp_path / "no_peft.py"
    script.write_text(NO_PEFT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(run_dir / "generations.jsonl")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [r["prediction"] for r in dev_rows(run_dir)]
    assert result["class"] == "LlamaForCausalLM" and result["peft"] == []
    assert any(expected)  # the answers say something, so equality means something
    assert result["answers"] == expected


def test_adapter_only_is_the_runs_adapter_with_vllm_notes(runs, tmp_path):
    run_dir = runs("lora")
    out = tmp_path / "adapter"
    record = export(run_dir, out, adapter_only=True)
    assert record["kind"] == "adapter"
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        assert (out / name).read_bytes() == (run_dir / "model" / name).read_bytes()
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    assert not (out / "model.safetensors").exists()
    assert record["vllm"] == []  # r=16, LoRA, no modules_to_save, no bias: within vLLM's defaults
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "--enable-lora" in card
    assert record["base"]["path"] == resolve_base(read_run(run_dir))[0]


def test_vllm_notes_name_each_limit():
    lora = {"peft_type": "LORA", "r": 16, "bias": "none", "target_modules": ["q_proj", "v_proj"]}
    assert vllm_notes(lora) == []
    notes = " | ".join(vllm_notes({**lora, "r": 24, "use_dora": True, "modules_to_save": ["lm_head"],
                                   "bias": "lora_only"}))
    assert "--max-lora-rank 32" in notes  # the next rank vLLM allows
    assert "DoRA" in notes and "modules_to_save" in notes and "--enable-lora-bias" in notes
    assert "export merged" in vllm_notes({**lora, "r": 1024})[0]
    assert "prompt-adapter" in vllm_notes({"peft_type": "PROMPT_TUNING"})[0]


def test_qlora_merges_into_the_full_precision_base(runs, tmp_path):
    run_dir = runs("qlora")
    out = tmp_path / "merged"
    record = export(run_dir, out)
    assert record["kind"] == "merged"
    assert any("full precision" in n for n in record["notes"])
    as_merged, as_trained = record["verification"]
    assert as_merged["max_abs_logit_diff"] < 1e-4  # float32 base + adapter
    assert "4-bit" in as_trained["against"]
    print(f"qlora: max |Δlogit| merged vs the 4-bit model as trained: {as_trained['max_abs_logit_diff']:.3g}")
    assert as_trained["max_abs_logit_diff"] > as_merged["max_abs_logit_diff"]  # merging undid the 4-bit rounding
    assert adapter_vs_export(run_dir, out) < 1e-4
    assert "full precision (float32)" in (out / "README.md").read_text()


def test_prompt_tuning_exports_the_adapter_and_refuses_merged(runs, tmp_path):
    run_dir = runs("prompt_tuning")
    with pytest.raises(SllmxError, match="cannot be merged"):
        export(run_dir, tmp_path / "merged", merged=True)
    with pytest.raises(SllmxError, match="--quantize 8bit"):
        export(run_dir, tmp_path / "q", quantize="8bit")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "q").exists()
    record = export(run_dir, tmp_path / "adapter")
    assert record["kind"] == "adapter"
    assert json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["peft_type"] == "PROMPT_TUNING"
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).exists()
    assert any("cannot be merged" in n for n in record["notes"])
    assert record["base"]["path"] and os.path.isdir(record["base"]["path"])
    assert "prompt-adapter" in record["vllm"][0]


def test_full_fine_tune_is_resaved_with_tokenizer_and_card(runs, tmp_path):
    run_dir = runs("full")
    with pytest.raises(SllmxError, match="no adapter"):
        export(run_dir, tmp_path / "a", adapter_only=True)
    out = tmp_path / "full"
    record = export(run_dir, out)
    assert record["kind"] == "full"
    assert record["verification"][0]["max_abs_logit_diff"] == 0.0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert "training_args.bin" not in names


@pytest.mark.parametrize("bits,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_export_reloads_through_bitsandbytes(bits, layer, runs, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = runs("lora")
    out = tmp_path / bits
    record = export(run_dir, out, quantize=bits)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert config["quantization_config"][f"load_in_{bits}"] is True
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    assert type(model.model.layers[0].mlp.up_proj).__name__ == layer
    diff = record["verification"][0]["max_abs_logit_diff"]
    print(f"{bits}: max |Δlogit| against float32 base + adapter: {diff:.3g}")
    assert 0 < diff < 1.0  # lossy, but the same model
    assert f"tags:\n- sllmx\n- lora\n- sft\n- bitsandbytes\n- {bits}" in (out / "README.md").read_text()


def test_quantize_without_bitsandbytes_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(SllmxError, match="needs bitsandbytes"):
        check_quantize_available("4bit")


def test_model_card(runs, tmp_path):
    run_dir = runs("lora")
    export(run_dir, tmp_path / "out", verify=False)
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"][:3] == ["sllmx", "lora", "sft"]
    assert "license" not in meta and "base_model" not in meta  # model=tiny has no hub id; no licence recorded
    record = RunRecord.read(run_dir)
    assert "# lora / sft fine-tune of" in body
    for split, prov in record.data["splits"].items():
        assert f"| {split} | `{prov['origin']}` | {prov['rows']} | `{prov['sha256']}` |" in body
    assert f"best {record.dev_metric.best:.4f} at step {record.dev_metric.best_step}" in body
    assert record.test_metrics and f"| `test_loss` | {record.test_metrics['test_loss']:.4f} |" in body
    assert "python -m sllmx model=tiny logger=none trainer.max_steps=4" in body
    assert "method=lora trainer.learning_rate=0.01" in body
    assert "## Verification" not in body  # verify=False


def test_card_names_a_hub_base_model():
    assert hub_id({"source": "hf", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id({"source": "hf", "name_or_path": "/models/llama"}) is None
    assert hub_id({"source": "gguf", "name": "smollm2-135m"}) is None


REFUSALS = textwrap.dedent("""
    import contextlib, io, json, sys
    from sllmx.export import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        results.append([code, err.getvalue()])
    print(json.dumps({"results": results, "torch": "torch" in sys.modules}))
""")


def test_refusals_are_one_line_before_torch_loads(runs, tmp_path):
    run_dir = runs("lora")
    failed, running = tmp_path / "failed", tmp_path / "running"
    for folder, status in ((failed, "FAIL"), (running, "RUNNING")):
        folder.mkdir()
        data = json.loads((run_dir / "run.json").read_text())
        data.update(status=status, error="RuntimeError: boom" if status == "FAIL" else None)
        (folder / "run.json").write_text(json.dumps(data))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such run folder"),
        ([str(tmp_path), "--out", str(tmp_path / "o")], "no run.json in it"),
        ([str(failed), "--out", str(tmp_path / "o")], "status FAIL: RuntimeError: boom"),
        ([str(running), "--out", str(tmp_path / "o")], "status RUNNING"),
        ([str(run_dir), "--out", str(busy)], "the folder is not empty"),
        ([str(run_dir), "--out", str(tmp_path / "o"), "--frobnicate"], "unrecognized arguments: --frobnicate"),
        ([str(run_dir), "--out", str(tmp_path / "o"), "--adapter-only", "--quantize", "4bit"], "--quantize 4bit"),
        ([str(run_dir)], "required: --out"),
    ]
    script = tmp_path / "refusals.py"
    script.write_text(REFUSALS)
    proc = subprocess.run([sys.executable, str(script), json.dumps([argv for argv, _ in cases])],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for (argv, message), (code, err) in zip(cases, out["results"]):
        assert code == 2, argv
        assert err.startswith("sllmx: error: ") and err.count("\n") == 1 and message in err, err
    assert out["torch"] is False
    assert (busy / "keep.txt").read_text() == "mine" and not (tmp_path / "o").exists()
