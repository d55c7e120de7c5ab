"""What a model answers and how likely it finds an answer: greedy generation with the chat template (the dev
generations, ``python -m sllmx.chat``), answers' log-probabilities (preference pairs, the forgetting check),
and scoring a split with a metric plugin by what it needs (:func:`score_split`).  With several processes the
batches are dealt out to the ranks and the results gathered in order.  Public: metric plugins use the same
functions (docs/plugins.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

from sllmx.interfaces import Metric
from sllmx.runtime import Runtime, from_main, map_batches


def dev_prompts_and_references(dataset: Any) -> tuple[list[list[dict]], list[str]]:
    """Prompts (message lists) and reference answers of a dev split, for generation metrics.

    Works for the prompt/completion, preference (reference = ``chosen``) and unpaired
    (only ``label`` true rows) layouts; ``messages`` rows use the last assistant turn.

    Returns:
        ``(prompts, references)`` of equal length; empty when the layout has no reference (plain text).
    """
    prompts, refs = [], []
    cols = set(dataset.column_names)
    for row in dataset:
        if "messages" in cols:
            msgs = row["messages"]
            prompt, answer = msgs[:-1], msgs[-1]["content"]
        elif {"prompt", "chosen"} <= cols:
            prompt, answer = row["prompt"], row["chosen"]
        elif {"prompt", "completion"} <= cols:
            if "label" in cols and not row["label"]:
                continue
            prompt, answer = row["prompt"], row["completion"]
        else:
            return [], []
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(answer, list):
            answer = "".join(m["content"] for m in answer)
        prompts.append(prompt)
        refs.append(answer)
    return prompts, refs


#: a copy for generation is made only when it takes at most this share of the memory available
COPY_SHARE = 0.5


def contiguous_head_input(model: Any) -> None:
    """Make the output head's input contiguous before the head computes (a forward pre-hook on
    ``model.get_output_embeddings()``, registered once per head; a copy made with ``copy.deepcopy`` keeps it).

    Generation's prefill applies the head to the last position only (``hidden_states[:, -1:, :]``, shape
    ``(batch, 1, hidden)``, not contiguous).  For such an input PyTorch's CPU ``matmul`` (2.13) does not fold the
    batch into one matrix product when the weight does not require grad (a frozen head: every adapter method):
    it broadcasts the weight to ``(batch, hidden, vocabulary)``, copies it and runs ``bmm`` (pytorch/pytorch
    issue #151934).  For SmolLM2-135M at batch 32 that is a 1.8 GB copy and 2.2 s in bf16 instead of 0.01 s for
    the contiguous input.  A contiguous input costs a ``(batch, 1, hidden)`` copy; a contiguous one is passed as
    it is.

    Args:
        model: a causal LM (``transformers`` or PEFT-wrapped); nothing is done when it has no output embeddings.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "sllmx_contiguous_input", False):
        return
    head.register_forward_pre_hook(_contiguous_input)
    head.sllmx_contiguous_input = True


def _contiguous_input(module: Any, args: tuple) -> Optional[tuple]:
    """:func:`contiguous_head_input`'s pre-hook (module-level, so a hooked model pickles)."""
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def inference_copy(model: Any, runtime: Optional[Runtime] = None) -> Optional[Any]:
    """A copy of a PEFT model that computes the same function faster on a CPU, for greedy generation; the model
    itself is not touched.

    - A bitsandbytes 4-bit base (QLoRA): bitsandbytes dequantises every quantised weight at every call, which at
      one token a step is most of the time.  The copy holds those weights dequantised once (transformers'
      ``dequantize``) in the compute dtype, the values the 4-bit layers compute with; the base's other weights
      in the compute dtype where that changes no value (a method may have upcast them to fp32, as PEFT's
      ``prepare_model_for_kbit_training`` does; the built-in QLoRA does so for fp16 runs only); the adapter as it
      is.  So the weights are the same, and the activations are kept in the compute dtype as in a LoRA run.
    - A full-precision base in a float32 run: the adapter merged into the copy's weights (PEFT's
      ``merge_and_unload``), one product per layer instead of the base's and the adapter's.
    - A bf16/fp16 run's unquantised base: no copy.  Merging would round the update into 16-bit weights: most of
      a short run's update (each element below half a bf16 step of its weight) would vanish, and the answers be
      closer to the base model's than the trained model's.
    - Other quantised bases (LLM.int8 also quantises the activations; other quantisers have no ``dequantize``): no
      copy.

    Measured on 2 CPU cores (benchmarks/RESULTS.md section 17), SmolLM2-135M's 32 dev answers in a fresh process:
    QLoRA in bf16 in 1.3-1.4x less time than through the 4-bit layers, LoRA in fp32 in 1.3x less than unmerged
    (during a training run, only the evaluation before training gained).  The copy is part of the memory a run
    uses (its peak RSS).

    Args:
        model: the model being evaluated.
        runtime: the run's precision, device and processes (default: one process, fp32, CPU).

    Returns:
        the copy in eval mode (a ``PeftModel`` over the dequantised base; a plain ``transformers`` model where
        merged; marked ``sllmx_inference_copy``), or None: not a PEFT model, a copy already, not on a CPU, not one
        active adapter, a prompt-learning adapter (virtual tokens, not a weight update), a bf16/fp16 run's
        unquantised base, another quantised base, or a copy larger than :data:`COPY_SHARE` of the memory
        available to the main process (:func:`sllmx.memory.available_bytes`, divided among the ranks on the
        host; the main process decides for all ranks, so that they answer with the same function), which is said
        in a warning.  With several processes a collective call.
    """
    import copy

    import torch
    from peft import PeftModel

    from sllmx.memory import available_bytes

    runtime = runtime or Runtime()
    if not isinstance(model, PeftModel) or getattr(model, "sllmx_inference_copy", False) \
            or runtime.accelerator != "cpu" or len(model.active_adapters) != 1:
        return None
    name = model.active_adapters[0]
    base = model.get_base_model()
    quantized = getattr(base, "hf_quantizer", None) is not None
    dtype = runtime.compute_dtype
    if model.peft_config[name].is_prompt_learning or not (quantized or dtype == torch.float32) \
            or (quantized and not getattr(base, "is_loaded_in_4bit", False)):
        return None
    _, params = model.get_nb_trainable_parameters()  # 4-bit weights counted as the values they hold
    need = params * torch.finfo(dtype).bits // 8
    free = available_bytes(runtime.device) // runtime.world_size
    if not from_main(need <= COPY_SHARE * free, runtime):
        logging.getLogger("sllmx").warning(
            "generation: no room for a copy of the model without %s (%.1f GiB of %.1f GiB available); generating "
            "with the model as it trains", "its 4-bit weights" if quantized else "the unmerged adapter",
            need / 2**30, free / 2**30)
        return None
    clone = copy.deepcopy(model)
    for module in clone.modules():
        # a forward replaced on the instance (TRL's fused LM head, sllmx.shared_prompt) is a closure over the
        # original model: the copy computes with its own class's forward
        module.__dict__.pop("forward", None)
    if not quantized:
        clone = clone.merge_and_unload(adapter_names=[name])
    else:
        for param in clone.parameters():
            # the base's other weights (norms, embeddings, head), which a method may have upcast to fp32 (PEFT's
            # prepare_model_for_kbit_training), in the compute dtype where no value changes: the residual stream
            # in the compute dtype as in a LoRA run, and no cast of the head at every token
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                narrow = param.data.to(dtype)
                if torch.equal(narrow.to(param.dtype), param.data):
                    param.data = narrow
        said = logging.getLogger("transformers.integrations.bitsandbytes")
        level = said.level
        said.setLevel(logging.ERROR)  # it warns that the weights are cast to dtype, which is the point
        try:
            clone.get_base_model().dequantize(dtype=dtype)  # the quantised layers inside the adapter's layers too
        finally:
            said.setLevel(level)
    for param in clone.parameters():
        param.requires_grad_(False)
    clone.sllmx_inference_copy = True  # sllmx.chat generates from it: no copy of the copy
    return clone.eval()


def _cache_kwarg(model: Any) -> Optional[str]:
    """The name under which ``model.generate`` takes a filled key-value cache (``cache`` in transformers 5.24,
    ``past_key_values`` in versions before that rename), or None where :func:`shared_start` does not apply: an
    architecture not in :data:`sllmx.shared_prompt.ARCHITECTURES` (a recurrent layer would read the padding between
    the shared start and the rest), an attention kernel not in :data:`sllmx.shared_prompt.KERNELS`, a sliding window
    or length-dependent positions (:func:`sllmx.shared_prompt.plain_attention`: a window counts the padding as
    distance), a model's own ``generation_config.cache_implementation`` (``generate`` then refuses a cache passed in),
    or a prompt-learning adapter (its virtual tokens come first)."""
    import inspect

    from sllmx.shared_prompt import ARCHITECTURES, KERNELS, plain_attention

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    peft = getattr(model, "peft_config", None)
    if config is None or (peft and any(c.is_prompt_learning for c in peft.values())):
        return None
    text = config.get_text_config()
    if (getattr(text, "model_type", None) not in ARCHITECTURES or not plain_attention(config)
            or getattr(config, "_attn_implementation", None) not in KERNELS
            or getattr(getattr(base, "generation_config", None), "cache_implementation", None) is not None):
        return None
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def shared_start(model: Any, tokenizer: Any, texts: list[str]) -> Optional[tuple[dict[str, Any], Any]]:
    """The batch's shared first tokens (a system prompt) computed once, as every row's key-value cache: the prompts
    laid out as ``shared start + left padding + the rest``, the padding masked, so each row's tokens keep the
    positions they have alone (transformers counts positions from the attention mask), and the cache of the shared
    start repeated for every row.  ``model.generate`` then computes the rest only (after transformers' "re-use a
    prompt cache", docs "Caching", which continues from a cache; here with padding after the cached start).

    Args:
        model: the model generating (called once here, under the caller's ``no_grad`` and precision).
        texts: the rendered prompts of one batch.

    Returns:
        ``({"input_ids": (B, L), "attention_mask": (B, L)}, cache)``, or None when fewer than two prompts or fewer
        than :data:`sllmx.shared_prompt.MIN_COMMON_PREFIX` shared tokens (each prompt keeps at least one of its own).
    """
    import os

    import torch
    from transformers import DynamicCache

    from sllmx.shared_prompt import MIN_COMMON_PREFIX

    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    k = min(len(os.path.commonprefix(rows)), min(len(r) for r in rows) - 1)
    if len(rows) < 2 or k < MIN_COMMON_PREFIX:
        return None
    width, pad = max(len(r) for r in rows), tokenizer.pad_token_id
    ids = torch.tensor([r[:k] + [pad] * (width - len(r)) + r[k:] for r in rows])
    mask = torch.tensor([[1] * k + [0] * (width - len(r)) + [1] * (len(r) - k) for r in rows])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=base.config)
    model(input_ids=ids[:1, :k].to(model.device), use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): cache})
    cache.batch_repeat_interleave(len(rows))
    return {"input_ids": ids, "attention_mask": mask}, cache


@contextmanager
def inference(model: Any, tokenizer: Any, padding_side: str) -> Iterator[None]:
    """Evaluation mode and the given padding side for the block; both put back afterwards."""
    was_training, side = model.training, tokenizer.padding_side
    tokenizer.padding_side = padding_side
    model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def generate(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int, truncated: Optional[list[bool]] = None, runtime: Optional[Runtime] = None,
             progress: bool = True) -> list[str]:
    """Greedy generation of one answer per chat prompt (chat template, left padding).

    Args:
        prompts: message lists; the tokenizer's chat template renders them with the generation prompt.
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts per ``generate`` call.
        truncated: when given, extended with one flag per prompt: True when the answer reached
            ``max_new_tokens`` without an end-of-sequence token.
        runtime: the run's precision: a PEFT model generates from :func:`inference_copy` where there is one,
            made for the call, and under bf16/fp16 the model generates under
            ``torch.autocast`` at that dtype, as the trainer computes; with several processes, the batches are
            split across the ranks and every rank gets every answer (:func:`sllmx.runtime.map_batches`; a
            collective call).  None: one process, the model as given, no autocast.
        progress: a bar over the prompts on a terminal (:func:`sllmx.progress.batches_bar`); False for none.

    Returns:
        the decoded answers (special tokens removed), one per prompt.
    """
    import torch

    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id]))
    faster = inference_copy(model, runtime) if runtime is not None else None
    model = faster if faster is not None else model
    contiguous_head_input(model)
    runtime = runtime or Runtime()
    dtype = runtime.compute_dtype
    # the trainer's own mixed precision (transformers: autocast when bf16/fp16)
    precision = (torch.autocast(device_type=torch.device(model.device).type, dtype=dtype)
                 if dtype != torch.float32 else nullcontext())

    def one_batch(batch: list[list[dict]]) -> list[tuple[str, bool]]:
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
        extra: dict[str, Any] = {}
        with torch.no_grad(), precision:
            enc = shared_start(model, tokenizer, texts) if sharing is not None else None
            if enc is not None:
                enc, extra[sharing] = enc
            else:
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, **extra)
        new = gen[:, enc["input_ids"].shape[1]:]
        ended = torch.isin(new.cpu(), eos).any(dim=1)
        cut = [bool(new.shape[1] >= max_new_tokens and not e) for e in ended]
        if bar is not None:
            bar.update(len(batch))
        return list(zip(tokenizer.batch_decode(new, skip_special_tokens=True), cut))

    from sllmx.progress import batches_bar

    sharing = _cache_kwarg(model)
    bar = batches_bar(len(prompts), "generate") if progress else None
    try:
        with inference(model, tokenizer, "left"):
            out = map_batches(one_batch, prompts, batch_size, runtime)
    finally:
        if bar is not None:
            bar.close()
    if truncated is not None:
        truncated.extend(cut for _, cut in out)
    return [text.strip() for text, _ in out]


def preference_pairs(dataset: Any) -> tuple[list[list[dict]], list[list[dict]], list[list[dict]]]:
    """``(prompts, chosen, rejected)`` message lists of a split in the preference layout (empty otherwise)."""
    if dataset is None or not {"prompt", "chosen", "rejected"} <= set(dataset.column_names):
        return [], [], []
    as_msgs = lambda v, role: [{"role": role, "content": v}] if isinstance(v, str) else list(v)  # noqa: E731
    rows = list(dataset)
    return ([as_msgs(r["prompt"], "user") for r in rows], [as_msgs(r["chosen"], "assistant") for r in rows],
            [as_msgs(r["rejected"], "assistant") for r in rows])


def answer_logprobs(model: Any, tokenizer: Any, prompts: list[list[dict]], answers: list[list[dict]],
                    batch_size: int, counts: Optional[list[int]] = None,
                    runtime: Optional[Runtime] = None) -> list[float]:
    """Summed log-probability (nats) of each answer's tokens given its prompt, under ``model``.

    The conversation ``prompt + answer`` is rendered by the chat template; the answer's tokens
    are those after the rendering of ``prompt`` with the generation prompt (the tokens TRL's
    DPO trainer scores).  Right padding, no gradient, the model left in its previous mode.
    ``counts``, when given, is extended with each answer's number of tokens.  With ``runtime`` of
    several processes the batches are split across the ranks and gathered
    (:func:`sllmx.runtime.map_batches`; a collective call).
    """
    import torch

    def one_batch(pairs: list[tuple[list[dict], list[dict]]]) -> list[tuple[float, int]]:
        full = [tokenizer.apply_chat_template(p + a, tokenize=False) for p, a in pairs]
        heads = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p, _ in pairs]
        enc = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False)
        starts = [len(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in heads]
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        out = []
        for j, start in enumerate(starts):
            end = int(enc["attention_mask"][j].sum())  # right padding: the real tokens come first
            # position t predicts token t + 1; only the answer's rows of the logits are normalised,
            # so memory stays at (answer tokens x vocabulary) per row, not (batch x length x vocabulary)
            rows = torch.log_softmax(logits[j, start - 1:end - 1].float(), dim=-1)
            out.append((float(rows.gather(-1, enc["input_ids"][j, start:end].unsqueeze(-1)).sum()),
                        max(end - start, 0)))
        return out

    with inference(model, tokenizer, "right"):
        scored = map_batches(one_batch, list(zip(prompts, answers)), batch_size, runtime or Runtime())
    if counts is not None:
        counts.extend(n for _, n in scored)
    return [lp for lp, _ in scored]


def prompt_tokens(tokenizer: Any, prompts: list[list[dict]]) -> list[int]:
    """Tokens of each prompt as the model reads it: rendered by the chat template with the generation prompt,
    tokenized without added special tokens (what :func:`generate` feeds the model)."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def per_example(metric: Metric, *example: Any) -> Optional[dict[str, float]]:
    """The metric's values on one example alone (``metric.compute([a], [b])``): the per-example scores a paired
    test compares between two systems on the same examples (generations.jsonl ``scores``).  None when the
    metric cannot score a single example (it raises) or gives a non-number."""
    try:
        return {k: float(v) for k, v in metric.compute(*([x] for x in example)).items()}
    except Exception:  # a corpus-level metric may refuse one example; the aggregate stands
        return None


def score_split(metric: Metric, model: Any, tokenizer: Any, dataset: Any, max_new_tokens: int,
                batch_size: int, banned: tuple = (), expect_json: bool = False, runtime: Optional[Runtime] = None,
                ) -> tuple[dict[str, float], list[dict[str, Any]], Optional[dict[str, Any]]]:
    """The metric's values on ``dataset``, the rows behind them (for ``generations.jsonl``) and
    the guardrail checks of the answers (:func:`sllmx.safety.check_outputs`; None without generations).

    Computes what ``metric.needs``: greedy generations against the references, or each
    preference pair's chosen and rejected log-probabilities.  With generations, the values also
    hold the checks' shares (``empty_answers``, ``truncated_answers``, ``pii_answers``,
    ``banned_answers``, ``invalid_json_answers`` with ``expect_json``) and the cost of the answers:
    ``prompt_tokens`` (mean tokens per prompt, :func:`prompt_tokens`) and ``latency_s`` (seconds of greedy
    generation per answer, in batches of ``batch_size``, the making of :func:`inference_copy` included).  Each row
    holds its ``scores`` (:func:`per_example`; and ``prompt_tokens`` with generations).  Returns ``({}, [], None)``
    when the split has nothing the metric can use (e.g. generations of a plain-text split).  With
    ``runtime`` of several processes, the ranks share the batches and all get the same values
    (a collective call: every rank must make it).

    Raises:
        SllmxError: a metric whose ``needs`` sllmx does not know.
    """
    from sllmx.errors import SllmxError
    from sllmx.interfaces import NEEDS_GENERATIONS, NEEDS_LOSS, NEEDS_PAIR_LOGPROBS

    if metric.needs == NEEDS_GENERATIONS:
        from sllmx.safety import as_metrics, check_outputs

        prompts, refs = dev_prompts_and_references(dataset)
        if not prompts:
            return {}, [], None
        cut: list[bool] = []
        started = time.perf_counter()
        preds = generate(model, tokenizer, prompts, max_new_tokens, batch_size, cut, runtime)
        latency = (time.perf_counter() - started) / len(prompts)
        lengths = prompt_tokens(tokenizer, prompts)
        rows = [{"input": p, "reference": r, "prediction": x, "truncated": t, "prompt_tokens": n,
                 "scores": per_example(metric, x, r)}
                for p, r, x, t, n in zip(prompts, refs, preds, cut, lengths)]
        checks = check_outputs(preds, cut, banned, expect_json)
        values = {k: float(v) for k, v in metric.compute(preds, refs).items()}
        cost = {"prompt_tokens": sum(lengths) / len(lengths), "latency_s": latency}
        return {**values, **as_metrics(checks), **cost}, rows, checks
    if metric.needs == NEEDS_PAIR_LOGPROBS:
        prompts, chosen, rejected = preference_pairs(dataset)
        if not prompts:
            return {}, [], None
        lp_c = answer_logprobs(model, tokenizer, prompts, chosen, batch_size, runtime=runtime)
        lp_r = answer_logprobs(model, tokenizer, prompts, rejected, batch_size, runtime=runtime)
        rows = [{"input": p, "chosen_logp": c, "rejected_logp": r, "scores": per_example(metric, c, r)}
                for p, c, r in zip(prompts, lp_c, lp_r)]
        return {k: float(v) for k, v in metric.compute(lp_c, lp_r).items()}, rows, None
    if metric.needs == NEEDS_LOSS:  # computed from the evaluation's loss (add_loss_metrics)
        return {}, [], None
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "runtime": runtime or Runtime()}
    try:
        got = metric.inputs(model, tokenizer, dataset, settings)
    except NotImplementedError as exc:
        raise SllmxError(str(exc)) from exc
    if got is None:
        return {}, [], None
    return {k: float(v) for k, v in metric.compute(*got.args).items()}, list(got.rows), None
