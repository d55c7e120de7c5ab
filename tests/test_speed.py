"""Throughput changes of issue 7 keep the numbers: packing keeps examples isolated, the lean SFT
loss equals TRL's, grouped batches leave the dev evaluation alone, tokenised splits are cached,
and gradient checkpointing follows the memory estimate.  (Speed itself is measured by
benchmarks/, not here.)"""

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sllmx.memory import activation_bytes, decide_checkpointing
from sllmx_plugins.tiny_model import TinyModelConfig, TinySource
from sllmx_plugins.trainers import SFT, SFTTrainerConfig, label_positions_loss

CONVERSATIONS = [
    ("환불은 어떻게 하나요?", "주문 번호를 알려 주시면 바로 처리해 드릴게요."),
    ("배송이 늦어요", "죄송합니다. 오늘 중으로 확인해서 연락드리겠습니다."),
    ("hi", "hello"),
    ("비밀번호를 잊어버렸어요. 어떻게 다시 설정하나요?", "로그인 화면의 '비밀번호 찾기'를 누르고 이메일 주소를 입력하세요."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = TinySource().resolve(TinyModelConfig(), str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def _ids(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                          tokenize=True, return_dict=True)["input_ids"] for q, a in CONVERSATIONS]


def _per_example_nll(logits, labels, example_of_token):
    """Mean next-token NLL of each example: ``labels`` already -100 where nothing is predicted."""
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    target = labels[0, 1:]
    keep = target != -100
    nll = -logp[keep].gather(-1, target[keep, None])[:, 0]
    ex = example_of_token[0, 1:][keep]
    return torch.stack([nll[ex == i].mean() for i in range(int(ex.max()) + 1)])


def test_packed_per_example_losses_equal_unpacked(tiny):
    """TRL's padding-free packing (what ``trainer.packing=true`` trains on) gives each example its
    own positions and attention: per-example losses equal the padded batch's to 1e-4.  With the
    positions of one long sequence instead, examples attend to each other and the losses move."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    _, tok, model = tiny
    ids = _ids(tok)
    pad = tok.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)([{"input_ids": x} for x in ids])
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    unpacked = []
    for row, n in enumerate(len(x) for x in ids):
        labels = padded["labels"][row: row + 1, :n]
        unpacked.append(_per_example_nll(logits[row: row + 1, :n], labels, torch.zeros_like(labels))[0])
    unpacked = torch.stack(unpacked)

    packed = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)([{"input_ids": x} for x in ids])
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, sum(map(len, ids)))
    example_of_token = (packed["position_ids"] == 0).cumsum(-1) - 1
    # everything the collator gives the model, and use_cache=False as SFTTrainer.compute_loss sets it:
    # transformers reads packed sequences from position_ids only without a KV cache
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits
    packed_nll = _per_example_nll(logits, packed["labels"], example_of_token)
    assert torch.allclose(packed_nll, unpacked, atol=1e-4), (packed_nll, unpacked)

    with torch.no_grad():  # the control: no resets, so later examples see the earlier ones
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits
    leaky_nll = _per_example_nll(leaky, packed["labels"], example_of_token)
    assert abs(leaky_nll[0] - unpacked[0]) < 1e-4  # the first example has nothing before it
    assert (leaky_nll[1:] - unpacked[1:]).abs().max() > 1e-2


def _sft_trainer(tiny, tmp_path, dataset, **fields):
    from datasets import Dataset

    import sllmx.validate  # noqa: F401  (the learning_rate default's resolver, as sllmx.compose imports it)

    path, tok, _ = tiny
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SFTTrainerConfig), fields))
    args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], seed=0,
                per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=1)
    if dataset is None:
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                                      "completion": [{"role": "assistant", "content": a}]} for q, a in CONVERSATIONS])
    return SFT().build(model, tok, dataset, dataset, cfg, args, [])


def test_lean_loss_equals_trls_fused_loss(tiny, tmp_path):
    """``token_metrics=false`` (the model's own cross-entropy) computes the loss TRL's fused head
    computes, on the same batch, and logs no per-token extras."""
    lean = _sft_trainer(tiny, tmp_path, None)
    full_logits = _sft_trainer(tiny, tmp_path, None, label_positions_only=False)
    full = _sft_trainer(tiny, tmp_path, None, token_metrics=True)
    batch = lean.data_collator([lean.train_dataset[i] for i in range(4)])
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        a = lean.compute_loss(lean.model, dict(batch), num_items_in_batch=torch.tensor(n))
        b = full.compute_loss(full.model, dict(batch), num_items_in_batch=torch.tensor(n))
        c = full_logits.compute_loss(full_logits.model, dict(batch), num_items_in_batch=torch.tensor(n))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(c, b, atol=1e-5), (a, b, c)
    assert lean.sllmx_compact_head and not full_logits.sllmx_compact_head
    logged = lambda t: {k for mode in t._metrics.values() for k in mode}  # noqa: E731
    assert "entropy" in logged(full) and "entropy" not in logged(lean) | logged(full_logits)


def _model_loss_and_grads(model, batch, loss_fn):
    model.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _own_loss(num_items):
    def fn(model, batch):
        kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
        return model(**batch, use_cache=False, **kwargs).loss
    return fn


def _label_positions(num_items):
    return lambda model, batch: label_positions_loss(model, batch, num_items)


@pytest.mark.parametrize("layout", ["padded", "packed", "prompt_tuning"])
def test_label_positions_loss_equals_the_models_own_loss_and_gradients(tiny, layout):
    """The output head applied only at label positions gives the model's own loss and the same
    gradients (to 1e-5), with and without ``num_items_in_batch``: on a padded batch with the loss on the
    answers, on a padding-free packed batch, and through PEFT prompt tuning (virtual tokens prepended)."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    path, tok, _ = tiny
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    if layout == "prompt_tuning":
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for q, _ in CONVERSATIONS]
    examples = [{"input_ids": full, "labels": [-100] * len(p) + full[len(p):]} for p, full in zip(prompts, _ids(tok))]
    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=layout == "packed")
    batch = collator(examples)
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < n_labels < 0.8 * batch["labels"].numel()  # the prompts are masked: many positions have no label
    for num_items in (None, torch.tensor(n_labels + 3)):
        own, own_grads = _model_loss_and_grads(model, batch, _own_loss(num_items))
        ours, our_grads = _model_loss_and_grads(model, batch, _label_positions(num_items))
        assert torch.allclose(own, ours, atol=1e-5), (layout, own, ours)
        assert own_grads.keys() == our_grads.keys() and own_grads
        for name, grad in own_grads.items():
            assert torch.allclose(grad, our_grads[name], atol=1e-5), name


def test_trls_fused_head_on_label_positions_gives_the_same_log_probs_and_gradients(tiny, monkeypatch):
    """sllmx.trl.label_positions_head: TRL's fused LM head (DPO, KTO, GRPO) scores only the labelled positions on a
    CPU; the per-token log-probabilities, entropies and gradients equal those of its every-position path (1e-5)."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from sllmx.trl import label_positions_head

    path, tok, _ = tiny
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # restored after the test
    model = AutoModelForCausalLM.from_pretrained(path).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(x) for x in _ids(tok)], batch_first=True,
                                          padding_value=tok.pad_token_id)
    labels = ids.masked_fill(torch.arange(ids.shape[1]) < 12, -100).masked_fill(ids == tok.pad_token_id, -100)

    def scored():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), out.entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    every, every_entropy, every_grads = scored()
    assert label_positions_head() and label_positions_head()  # idempotent
    assert trl_utils._use_triton(torch.device("cpu"))
    compact, compact_entropy, compact_grads = scored()
    mask = labels[:, 1:] != -100
    assert 0 < int(mask.sum()) < 0.8 * mask.numel()
    torch.testing.assert_close(compact, every, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compact_entropy[mask], every_entropy[mask], atol=1e-5, rtol=1e-5)
    for name, grad in every_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_label_positions_loss_falls_back_to_the_full_logits(tiny, tmp_path, caplog):
    """A model whose output head does not see its hidden states (here: ``get_output_embeddings`` names a
    module the forward never calls) gets None, and the SFT trainer then uses the model's own loss, with
    one warning."""
    import torch.nn as nn

    trainer = _sft_trainer(tiny, tmp_path, None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        own = trainer.model(**batch, use_cache=False).loss
    unused = nn.Linear(4, 4)
    trainer.model.get_output_embeddings = lambda: unused
    with torch.no_grad():
        assert label_positions_loss(trainer.model, batch) is None
        with caplog.at_level("WARNING", logger="sllmx"):
            loss = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(loss, own, atol=1e-6)
    assert not trainer.sllmx_compact_head and "uses the full logits" in caplog.text


def test_batches_grouped_by_length_and_dev_in_order(tiny, tmp_path):
    """sllmx's SFT default groups training batches by length; the dev split keeps its order, so
    eval_loss does not depend on the sampling strategy or the seed."""
    from torch.utils.data import SequentialSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = _sft_trainer(tiny, tmp_path, None)
    assert SFTTrainerConfig.train_sampling_strategy == "group_by_length"
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    assert isinstance(trainer._get_eval_sampler(trainer.eval_dataset), SequentialSampler)
    random = _sft_trainer(tiny, tmp_path, None, train_sampling_strategy="random")
    assert not isinstance(random._get_train_sampler(), LengthGroupedSampler)


def test_tokenised_splits_are_cached_by_content_tokenizer_and_template(tiny, tmp_path):
    """Splits saved by content (sllmx.data.cache) get datasets' map cache: a second trainer on the
    same rows, tokenizer and template loads TRL's tokenisation (no new cache file, equal ids); a
    changed chat template tokenises anew."""
    from datasets import Dataset

    from sllmx.data.cache import saved_split
    from sllmx.data.pipeline import sha256_of

    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
            for q, a in CONVERSATIONS]
    root = tmp_path / "datasets"
    first = saved_split(Dataset.from_list(rows), sha256_of(rows), root)
    folder = root / sha256_of(rows)
    assert (folder / "state.json").exists()

    t1 = _sft_trainer(tiny, tmp_path, first)
    files = sorted(p.name for p in folder.glob("cache-*.arrow"))
    assert files, "TRL's map results were not cached beside the saved split"
    again = saved_split(Dataset.from_list(rows), sha256_of(rows), root)
    t2 = _sft_trainer(tiny, tmp_path, again)
    assert sorted(p.name for p in folder.glob("cache-*.arrow")) == files
    assert t2.train_dataset["input_ids"] == t1.train_dataset["input_ids"]
    assert {Path(f["filename"]).name for f in t2.train_dataset.cache_files} <= set(files)

    path, tok, _ = tiny
    tok2 = copy.deepcopy(tok)
    tok2.chat_template = tok.chat_template + "{# another template, the same text #}"
    from transformers import AutoModelForCausalLM

    cfg = OmegaConf.to_object(OmegaConf.structured(SFTTrainerConfig))
    SFT().build(AutoModelForCausalLM.from_pretrained(path), tok2, again, again, cfg,
                dict(output_dir=str(tmp_path / "o2"), use_cpu=True, bf16=False, report_to=[], max_steps=1), [])
    assert len(list(folder.glob("cache-*.arrow"))) > len(files)


class _Cfg:
    """SmolLM2-135M's shape (config.json of the converted model)."""

    hidden_size, num_attention_heads, num_hidden_layers, vocab_size = 576, 9, 30, 49152


def test_activation_estimate_and_checkpointing_decision(monkeypatch):
    """Korthikanti et al.'s estimate for SmolLM2 at batch 8 × 640 tokens in fp32 (a step measured
    14.7 GB peak RSS); checkpointing goes on only above half of the available memory."""
    est = activation_bytes(_Cfg(), 8, 640)
    per_layer = 640 * 8 * 576 * (34 + 5 * 9 * 640 / 576) * 2
    assert est == int(30 * per_layer + 3 * 8 * 640 * 49152 * 4)
    assert 17.5e9 < est < 18.5e9
    assert activation_bytes(_Cfg(), 8, 640, bytes_per_value=2) < est
    import sllmx.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 2**30)
    assert decide_checkpointing(_Cfg(), 8, 640, "cpu")["gradient_checkpointing"] is False
    monkeypatch.setattr(memory, "available_bytes", lambda device: 24 * 2**30)
    d = decide_checkpointing(_Cfg(), 8, 640, "cpu")
    assert d["gradient_checkpointing"] is True and d["activation_estimate_bytes"] == est
    assert decide_checkpointing(_Cfg(), 8, 160, "cpu")["gradient_checkpointing"] is False


def test_run_records_memory_and_caches_splits(tmp_path):
    """A run records its checkpointing decision and peak RSS, and memory-maps its splits from the cache."""
    from tests.common import FAST, compose_config

    from sllmx.run import run

    cfg = compose_config([*FAST, "eval.before_training=false"], tmp_path / "run", tmp_path / "cache")
    record = run(cfg)
    assert record.status == "COMPLETE"
    assert record.memory["set_by"] == "memory estimate" and record.memory["gradient_checkpointing"] is False
    from sllmx.memory import keep_freed_memory

    assert record.memory["allocator"] == keep_freed_memory()  # what it set (None where it sets nothing)
    assert 0 < record.memory["activation_estimate_bytes"] < record.memory["available_bytes"]
    assert record.peak_rss_bytes > 100 * 2**20
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["memory"] == record.memory
    digests = {record.data["splits"][s]["sha256"] for s in ("train", "dev")}
    assert digests <= {p.name for p in (tmp_path / "cache" / "datasets").iterdir()}

    cfg = compose_config([*FAST, "eval.before_training=false", "trainer.gradient_checkpointing=true"],
                         tmp_path / "run2", tmp_path / "cache")
    record = run(cfg)
    assert record.memory["gradient_checkpointing"] is True
    assert record.memory["set_by"] == "trainer.gradient_checkpointing"


def test_keep_freed_memory_keeps_large_blocks_in_the_heap_and_leaves_a_users_allocator(monkeypatch):
    """On glibc, sllmx.memory.keep_freed_memory (called for every CPU run) stops the allocator from mapping large
    blocks fresh (and unmapping them when freed) and from trimming the heap: a 64 MiB tensor comes from the heap,
    which keeps its size when the tensor is freed; available_bytes counts it as available without trimming it;
    reset_peak_memory (at a run's start) trims it.  A preloaded
    library or the user's own MALLOC_* settings are left alone."""
    import ctypes
    import os
    import platform
    import threading

    import types

    import psutil

    from sllmx.memory import _kept_free_bytes, available_bytes, keep_freed_memory, reset_peak_memory

    libc = ctypes.CDLL(None)
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    if (platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not hasattr(libc, "mallinfo2")
            or "jemalloc" in maps or "tcmalloc" in maps or threading.current_thread() is not threading.main_thread()):
        pytest.skip("glibc's own malloc (mallopt, mallinfo2), from the main thread (its heap is not capped at 64 MiB)")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD", "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() == "glibc mallopt: M_TRIM_THRESHOLD -1, M_MMAP_MAX 0"
    mapped, size = libc.mallinfo2().hblkhd, 64 * 2**20
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    assert libc.mallinfo2().hblkhd <= mapped  # not an mmap of its own
    heap = libc.mallinfo2().arena
    assert heap >= size
    libc.free(block)
    assert libc.mallinfo2().arena >= heap  # the freed top of the heap is kept, not trimmed

    def resident():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    kept = resident()
    # a room check counts the kept free heap as available and keeps it (a trim mid-run re-faults the next steps)
    assert _kept_free_bytes() >= size // 2  # counted from the last trim on, which can undercount: not exactly size
    real = psutil.virtual_memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=2**30))
    assert abs(available_bytes("cpu") - 2**30 - _kept_free_bytes()) < 2**20
    monkeypatch.setattr(psutil, "virtual_memory", real)
    assert resident() >= kept - 2**20
    reset_peak_memory("cpu")  # a run's start hands the kept pages back, and they no longer count as kept
    assert kept - resident() >= 32 * 2**20 and _kept_free_bytes() < size
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert keep_freed_memory() is None
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is None


@pytest.mark.parametrize("kernel,system", [("sdpa", 0), ("eager", 0), ("sdpa", 20), ("eager", 20)])
def test_prefix_sharing_gives_trls_log_probs_and_gradients(tiny, kernel, system):
    """sllmx.shared_prompt (trainer.prefix_sharing, DPO): one packed row per pair, prompt + chosen + rejected, gives
    the per-token log-probabilities, entropies, logits means and top-1 flags of TRL's two rows per pair, and the same
    gradients (1e-5), from fewer positions; where every prompt starts with the same ``system`` tokens, those are
    computed once, as the rows' cache; a batch it cannot pack (left padding, no shared first token) runs TRL's own
    rows."""
    from sllmx.shared_prompt import MIN_COMMON_PREFIX, common_prefix

    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from sllmx.shared_prompt import pack_pairs, share_prompts

    path, tok, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=kernel).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    assert share_prompts(model) and share_prompts(model)  # idempotent
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(5, tok.vocab_size, (n,), generator=g).tolist()

    # prompts of 1-9 tokens; answers of 1-7 tokens, one pair whose answers start alike
    examples = [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
                for p, c, r in [(9, 3, 7), (1, 5, 1), (4, 2, 2), (6, 7, 4)]]
    examples[2]["rejected_ids"][0] = examples[2]["chosen_ids"][0]
    head = ids(system)
    for e in examples:
        e["prompt_ids"] = head + e["prompt_ids"]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    fields = ("log_probs", "entropy", "mean_logits", "is_top1")

    def scored():
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        out.log_probs.sum().backward()
        return {f: getattr(out, f).detach() for f in fields}, {n: p.grad.clone() for n, p in model.named_parameters()}

    packing = pack_pairs(batch["input_ids"], batch["attention_mask"], labels)
    assert packing["input_ids"].numel() < 0.8 * batch["input_ids"].numel()
    k = common_prefix(packing)
    # the shortest prompt has system + 1 tokens, whose last one predicts the first scored token
    assert k == (system if system >= MIN_COMMON_PREFIX else 0)
    width = packing["input_ids"].size(1)
    seen = []
    hook = model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    shared, shared_grads = scored()
    packed_forward, model.forward = model.forward, model.forward.__wrapped__  # TRL's own two rows per pair
    rows, rows_grads = scored()
    model.forward = packed_forward
    hook.remove()
    packed = [(1, k), (len(examples), width - k)] if k else [(len(examples), width)]
    assert seen == packed + [tuple(batch["input_ids"].shape)]
    mask = labels[:, 1:] != -100
    assert int(mask.sum()) == sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    for f in fields:
        torch.testing.assert_close(shared[f][mask], rows[f][mask], atol=1e-5, rtol=1e-5)
    assert not shared["log_probs"][~mask].any()
    for name, grad in rows_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)
    if system:  # no shared start where it would change the function: dropout in training, a sliding window
        from sllmx.shared_prompt import plain_attention

        seen[:] = []
        hook = model.base_model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        dropout = torch.nn.Dropout(0.1)
        model.base_model.layers[0].add_module("sllmx_test_dropout", dropout)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
              fused_lm_head=True, use_cache=False)
        del model.base_model.layers[0].sllmx_test_dropout
        hook.remove()
        assert seen == [(len(examples), width)]
        assert plain_attention(model.config)
        windowed = type(model.config).from_dict({**model.config.to_dict(), "sliding_window": 8})
        assert not plain_attention(windowed)
    # what cannot be packed is TRL's layout
    assert pack_pairs(batch["input_ids"].flip(1), batch["attention_mask"].flip(1), labels.flip(1)) is None
    other = batch["input_ids"].clone()
    other[len(examples):, 0] += 1
    assert pack_pairs(other, batch["attention_mask"], labels) is None
    # an architecture not known to be attention-only (a hybrid's recurrent layers would ignore the mask) keeps TRL's
    hybrid = AutoModelForCausalLM.from_pretrained(path, attn_implementation=kernel)
    add_fused_lm_head(hybrid)
    hybrid.config.model_type = "lfm2"
    assert not share_prompts(hybrid) and not getattr(hybrid.forward, "sllmx_shared_prompt", False)


def test_orpo_through_the_fused_head_gives_trls_losses_and_gradients(tiny, tmp_path):
    """trainer=orpo with prefix_sharing (the default): ORPO's forward through TRL's fused LM head, one packed row per
    pair, gives TRL's loss, NLL, log-probabilities and gradients (1e-5) without the full logits (a full model; a
    LoRA one: the loss); its logits metrics differ from TRL's (other positions averaged); prefix_sharing=false, an
    adapter on the output head (which the fused head would not see) or prefix tuning keeps TRL's forward."""
    from datasets import Dataset
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import sllmx.validate  # noqa: F401  (the learning_rate default's resolver)
    from sllmx_plugins.trainers import ORPO, ORPOTrainerConfig

    path, tok, _ = tiny
    pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
              "rejected": [{"role": "assistant", "content": CONVERSATIONS[(i + 1) % 4][1][: 5 + 3 * i]}]}
             for i, (q, a) in enumerate(CONVERSATIONS)]
    dataset = Dataset.from_list(pairs)

    def trainer(targets=None, **fields):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
        if targets == "prefix":
            model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
        elif targets:
            model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ORPOTrainerConfig), fields))
        args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], seed=0,
                    per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=1)
        return ORPO().build(model, tok, dataset, dataset, cfg, args, [])

    fused, plain = trainer(), trainer(prefix_sharing=False)
    assert fused.sllmx_fused_forward and not plain.sllmx_fused_forward and "forward" not in vars(plain.model)
    batch = fused.data_collator([fused.train_dataset[i] for i in range(4)])
    seen = []
    hook = fused.model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    results = {}
    for name, t in (("fused", fused), ("plain", plain)):
        t.model.train()
        t.model.zero_grad()
        loss, metrics = t.get_batch_loss_metrics(t.model, dict(batch))
        loss.backward()
        results[name] = loss.detach(), metrics, {n: p.grad.clone() for n, p in t.model.named_parameters()}
    hook.remove()
    rows = 2 * 4
    assert len(seen) == 1 and seen[0][0] == rows // 2  # one packed row per pair
    assert seen[0][1] < batch["chosen_input_ids"].shape[1] + batch["rejected_input_ids"].shape[1]
    (a, ma, ga), (b, mb, gb) = results["fused"], results["plain"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for key in ("nll_loss", "logps/chosen", "logps/rejected", "log_odds_ratio", "rewards/margins"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-5), key
    assert ma["logits/chosen"] != mb["logits/chosen"] and abs(ma["logits/chosen"] - mb["logits/chosen"]) < 1.0
    for name, grad in gb.items():
        torch.testing.assert_close(ga[name], grad, atol=1e-5, rtol=1e-4)

    lora, lora_plain = trainer(["q_proj", "v_proj"]), trainer(["q_proj", "v_proj"], prefix_sharing=False)
    assert lora.sllmx_fused_forward
    (a, _), (b, _) = (t.get_batch_loss_metrics(t.model, dict(batch)) for t in (lora, lora_plain))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not trainer(["q_proj", "lm_head"]).sllmx_fused_forward and not trainer("prefix").sllmx_fused_forward


def test_the_output_head_gets_a_contiguous_input_once_hooked(tiny):
    """contiguous_head_input: generation's prefill slices the last position (not contiguous), which PyTorch's CPU
    matmul with a frozen weight broadcasts into a weight copy per row (pytorch/pytorch#151934); the hook hands the
    head a contiguous input, the same logits, and is registered once however often it is called."""
    from transformers import AutoModelForCausalLM

    from sllmx.generation import contiguous_head_input

    path, _, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False)
    head = model.get_output_embeddings()
    hidden = torch.randn(3, 7, head.in_features)[:, -1:, :]
    assert not hidden.is_contiguous()
    seen = []
    contiguous_head_input(model)
    contiguous_head_input(model)
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        out = head(hidden)
        torch.testing.assert_close(out, torch.nn.functional.linear(hidden.contiguous(), head.weight))
        ids = torch.tensor([[1, 5, 9, 13], [1, 6, 10, 14]])
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    assert seen and all(seen) and len(head._forward_pre_hooks) == 2  # ours once, the recorder


def test_generation_computes_the_shared_system_prompt_once_and_gives_the_same_answers(tiny, monkeypatch):
    """generate(): prompts that start alike (a system prompt) have that start computed once, as every row's cache,
    the rest left-padded after it; the greedy answers and their truncation flags are those of the plain left-padded
    batch, and prompts without such a start (or a model it does not apply to) go the plain way."""
    import sllmx.generation
    from sllmx.generation import generate
    from sllmx.shared_prompt import MIN_COMMON_PREFIX

    path, tok, model = tiny
    system = [{"role": "system", "content": "You are a support agent of a shop. Answer in one short sentence."}]
    prompts = [system + [{"role": "user", "content": q}] for q, _ in CONVERSATIONS]
    seen, tokens = [], []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    plain_generate = model.generate

    def recorded(input_ids, **kwargs):
        out = plain_generate(input_ids=input_ids, **kwargs)
        tokens.append(out[:, input_ids.size(1):])
        return out

    monkeypatch.setattr(model, "generate", recorded, raising=False)
    try:
        cut_shared: list[bool] = []
        shared = generate(model, tok, prompts, 6, 4, cut_shared, progress=False)
        shared_calls, seen[:] = list(seen), []
        monkeypatch.setattr(sllmx.generation, "_cache_kwarg", lambda model: None)
        cut_plain: list[bool] = []
        plain = generate(model, tok, prompts, 6, 4, cut_plain, progress=False)
        plain_calls = list(seen)
    finally:
        hook.remove()
    assert shared == plain and cut_shared == cut_plain
    assert len(tokens) == 2 and torch.equal(tokens[0], tokens[1]) and tokens[0].size(1) == 6
    k, width = shared_calls[0][1], plain_calls[0][1]
    assert shared_calls[0][0] == 1 and k >= MIN_COMMON_PREFIX
    assert shared_calls[1] == (len(prompts), width - k) and plain_calls[0] == (len(prompts), width)


def test_dpo_computes_the_dev_references_once_and_gives_trls_evaluation(tiny, tmp_path):
    """trainer=dpo: the dev split's reference log-probabilities are computed at the first evaluation only; every
    evaluation, before and after training, gives what TRL's own evaluation (a reference forward per batch) gives,
    and a dataset passed to evaluate() goes TRL's way."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import sllmx.validate  # noqa: F401  (the learning_rate default's resolver)
    from sllmx_plugins.trainers import DPO, DPOTrainerConfig

    path, tok, _ = tiny
    pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
              "rejected": [{"role": "assistant", "content": CONVERSATIONS[(i + 1) % 4][1][: 5 + 3 * i]}]}
             for i, (q, a) in enumerate(CONVERSATIONS)]
    dataset = Dataset.from_list(pairs)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa"),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DPOTrainerConfig),
                                                {"learning_rate": 1e-2, "per_device_train_batch_size": 4,
                                                 "per_device_eval_batch_size": 2, "max_steps": 1}))
    args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], seed=0, save_strategy="no")
    trainer = DPO().build(model, tok, dataset, dataset, cfg, args, [])
    calls = []
    hook = model.get_base_model().model.register_forward_pre_hook(lambda module, a: calls.append(1))

    def evaluation(own):
        calls.clear()
        metrics = (trainer.evaluate() if own else trl.DPOTrainer.evaluate(trainer))
        return metrics, len(calls)

    assert trainer.sllmx_dev_reference is None
    (first, n_first), (trls, n_trl) = evaluation(True), evaluation(False)
    assert trainer.sllmx_dev_reference[0] is trainer.eval_dataset
    assert "ref_chosen_logps" not in trainer.eval_dataset.column_names
    assert "ref_chosen_logps" in trainer.sllmx_dev_reference[1].column_names
    assert n_first == n_trl == 4  # 2 batches: the references once (2), the policy (2); TRL: both per batch
    trainer.train()
    (after, n_after), (trls_after, _) = evaluation(True), evaluation(False)
    assert n_after == 2  # the policy only
    for ours, theirs in ((first, trls), (after, trls_after)):
        for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/margins", "eval_logps/chosen"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert after["eval_loss"] != pytest.approx(first["eval_loss"], abs=1e-4)  # the step moved the policy
    calls.clear()
    trainer.evaluate(dataset, metric_key_prefix="test")
    assert len(calls) == 4  # a passed dataset: TRL's way, a reference forward per batch
    hook.remove()


@pytest.mark.parametrize("method,precision", [("lora", "fp32"), ("dora", "fp32"), ("qlora", "fp32"),
                                              ("qlora", "bf16"), ("lora", "bf16"), ("prompt_tuning", "fp32")])
def test_inference_copy_computes_the_adapters_function_and_leaves_the_model_alone(method, precision, tmp_path,
                                                                                  caplog, monkeypatch):
    """Dev generation's copy (sllmx.generation.inference_copy): an fp32 run's adapter merged, a QLoRA base
    dequantised; the copy computes what the model does and generates its greedy answers, with its own weights;
    the trained model, its weights, the forward TRL replaced on it and the random state stay as they were.  No
    copy for prompt tuning, for a bf16 run's unquantised base (the merge would round the update away), nor
    without room."""
    from contextlib import nullcontext

    from transformers import AutoTokenizer

    import sllmx.memory
    from sllmx.generation import generate, inference_copy
    from sllmx.plugins import registry, typed
    from sllmx.runtime import Runtime
    from tests.common import FAST, compose_config

    reg = registry()
    cfg = compose_config([*FAST, f"method={method}"], tmp_path / "run", tmp_path / "cache")
    plugin, method_cfg = reg.get("method", method), typed(cfg.method, "method")
    path = reg.get("model", "tiny").resolve(typed(cfg.model, "model"), str(tmp_path / "cache"))
    tokenizer, runtime = AutoTokenizer.from_pretrained(path), Runtime(precision=precision)
    torch.manual_seed(0)
    model = plugin.wrap(plugin.load_model(path, method_cfg, runtime), method_cfg, runtime, tokenizer)
    with torch.no_grad():  # an adapter that changes the answers (LoRA's B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    base = model.get_base_model()
    forward = base.forward
    base.forward = functools.wraps(type(base).forward)(lambda *a, **k: forward(*a, **k))  # as TRL's fused LM
    # head and sllmx.shared_prompt replace it
    patched = base.forward
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [[{"role": "user", "content": q}] for q, _ in CONVERSATIONS]

    rng = torch.random.get_rng_state()
    copied = inference_copy(model, runtime)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the training's random stream is not touched
    assert base.forward is patched and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    if method == "prompt_tuning" or (method, precision) == ("lora", "bf16"):
        assert copied is None
        return
    import bitsandbytes

    four_bit = {n: m for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear4bit)}
    assert bool(four_bit) == (method == "qlora")
    assert not any(isinstance(m, bitsandbytes.nn.Linear4bit) for m in copied.modules())
    for name, layer in four_bit.items():  # the products the 4-bit layers compute, from weights dequantised once
        x = torch.randn(3, layer.in_features, dtype=runtime.compute_dtype)
        with torch.no_grad():
            assert torch.equal(torch.nn.functional.linear(x, copied.get_submodule(name).weight), layer(x))
    if method == "qlora":  # norms, embeddings, head: the values the model holds, in the compute dtype
        held = {n: p for n, p in model.named_parameters() if not p.requires_grad and p.is_floating_point()}
        same = [torch.equal(p.float(), held[n].float()) and p.dtype == runtime.compute_dtype
                for n, p in copied.named_parameters() if n in held]
        assert same and all(same)
    assert type(copied).__name__ == ("PeftModelForCausalLM" if method == "qlora" else "LlamaForCausalLM")
    assert not any(p.requires_grad for p in copied.parameters())
    ids = torch.tensor([_ids(tokenizer)[0]])
    precise = precision == "fp32"
    autocast = nullcontext() if precise else torch.autocast("cpu", dtype=torch.bfloat16)
    relative = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    with torch.no_grad(), autocast:
        logits, trained = copied(input_ids=ids).logits.float(), model(input_ids=ids).logits.float()
        with model.disable_adapter():
            effect = relative(trained, model(input_ids=ids).logits.float())  # what the adapter changes: ~1.4
        # bf16: the same weights; the copy's products run outside the 4-bit layers (another kernel, other
        # rounding); on this random model the logits differed by ~10% after 40 tokens, a fourteenth of the
        # adapter's effect
        assert relative(logits, trained) < (1e-5 if precise else 0.1 * effect)
        assert effect > 0.5
    assert inference_copy(copied, runtime) is None  # sllmx.chat generates from the copy: no copy of it
    unmerged = generate(model, tokenizer, prompts, 12, 2, runtime=None, progress=False)
    answers = generate(model, tokenizer, prompts, 12, 2, runtime=runtime, progress=False)
    assert answers == (unmerged if precise else generate(copied, tokenizer, prompts, 12, 2, runtime=runtime,
                                                          progress=False))
    assert base.forward is patched and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad(), autocast:  # the copy computes with its own weights, not through the original's modules
        for p in model.parameters():
            if p.is_floating_point():
                p.zero_()
        assert torch.equal(copied(input_ids=ids).logits.float(), logits)

    monkeypatch.setattr(sllmx.memory, "available_bytes", lambda device: 1000)
    assert inference_copy(model, runtime) is None
    assert "no room for a copy of the model" in caplog.text
