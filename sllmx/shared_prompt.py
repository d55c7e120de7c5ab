"""One forward per preference pair: the prompt once, its two answers beside it (prefix sharing).

TRL's DPO trainer scores a batch of ``B`` pairs as ``2B`` rows, ``[prompt + chosen; prompt + rejected]``, so every
prompt token goes through the model twice (and through the reference model twice more).  Prefix sharing (Wang et
al., 2024, "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305) packs each pair into
one row, ``prompt + chosen + rejected``, with an attention mask under which the rejected answer sees the prompt but
not the chosen answer, and position ids that restart the rejected answer where the prompt ends; every answer token
then has exactly the context and position it has in TRL's layout, so the log-probabilities are the same function
(the floating-point sums differ in the last bits).

:func:`share_prompts` installs this under TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): a call
``model(input_ids, attention_mask, labels=..., fused_lm_head=True)`` whose rows are ``[chosen; rejected]`` is
answered from the packed rows, with the per-token outputs laid back out as TRL's ``2B`` rows, so DPO's losses,
metrics and reference forward run unchanged in TRL's DPOTrainer, and ORPO's in sllmx's forward for TRL's
ORPOTrainer (``sllmx_plugins.trainers``), which scores the chosen rows at every token.  A call it cannot pack (an
odd number of rows, left padding, a pair with no shared first token, prompt learning's ``inputs_embeds`` or prefix
key-values, a sliding window shorter than a packed row) runs TRL's own way, and so does every call of a model
outside :data:`ARCHITECTURES` or with an attention kernel other than ``sdpa``/``eager``.

The first tokens that every packed row of a batch shares, none of them scored (a system prompt: 82 of the ~300
tokens of a packed pair of the built-in task), are computed once per batch, from one row, and handed to every row
as its key-value cache (:func:`common_prefix`); the rows run from there, their keys and queries as before.  Not in
a training forward with gradient checkpointing, sharded parameters or dropout (:func:`_cache_unsafe`), nor for a
model with a sliding window or length-dependent positions (:func:`plain_attention`).
"""

from __future__ import annotations

import functools
from typing import Any

#: the attention kernels that take a 4-D mask as it is built here (``sdpa``: boolean, True = attend; ``eager``:
#: additive)
KERNELS = ("sdpa", "eager")
#: the architectures packed (``config.get_text_config().model_type``): decoders of attention layers only, rotary
#: positions taken from ``position_ids``, a 4-D mask used as given.  Others run TRL's rows: hybrid models (Mamba,
#: gated delta nets, short convolutions: their recurrent layers ignore the mask and would carry the chosen answer
#: into the rejected one), ALiBi models (Bloom builds its biases from a 2-D mask), mixture-of-experts models
#: (their router loss reads a 2-D mask).
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2")


def pack_pairs(input_ids, attention_mask, labels):
    """The packed layout of a ``[chosen; rejected]`` batch, or None where it cannot be packed.

    Args:
        input_ids: ``(2B, L)`` token ids, rows ``0..B-1`` the chosen, ``B..2B-1`` the rejected sequences of the same
            ``B`` pairs, right-padded.
        attention_mask: ``(2B, L)``, 1 on each row's tokens (a prefix of the row), 0 on padding.
        labels: ``(2B, L)``, the token id where the token is scored, -100 elsewhere: the rejected rows' answer
            tokens (the packed row holds their prompt once), the chosen rows' answer tokens or any of their tokens.

    Returns:
        ``None`` when the batch is not of that form, else a dict:
        ``input_ids`` ``(B, P)`` (``P`` the longest packed row: ``len(chosen) + len(rejected) - shared + 1``);
        ``position_ids`` ``(B, P)``; ``allowed`` ``(B, 1, P, P)`` boolean, True where a query may attend to a key;
        ``shift_labels`` ``(B, P)``, the label of the token each position predicts (-100: none);
        ``index`` ``(2B, L - 1)`` and ``valid`` ``(2B, L - 1)``: TRL's per-token output at ``[row, j]`` (the
        prediction of token ``j + 1``) is the packed output at ``[row mod B, index[row, j]]`` where ``valid``, else 0.
    """
    import torch

    rows, width = input_ids.shape
    if (rows % 2 or rows == 0 or attention_mask is None or attention_mask.shape != input_ids.shape
            or labels.shape != input_ids.shape):
        return None
    lengths = attention_mask.sum(1)
    positions = torch.arange(width, device=input_ids.device)
    if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
        return None  # not right-padded
    b = rows // 2
    scored = (labels != -100) & attention_mask.bool()
    first_scored = torch.where(scored.any(1), scored.int().argmax(1), lengths)
    same = (input_ids[:b] == input_ids[b:]).int().cumprod(1).sum(1)
    # the chosen row is laid out whole (its prompt tokens may be scored too: ORPO's NLL); the rejected one from the
    # last shared token on, so nothing at or before that token may be scored in it
    shared = torch.minimum(first_scored[b:], same)
    shared = torch.minimum(shared, torch.minimum(lengths[:b], lengths[b:]))
    if bool((shared < 1).any()):
        return None
    len_c, len_r = lengths[:b], lengths[b:]
    packed_len = len_c + len_r - shared + 1
    p = int(packed_len.max())

    ids = input_ids.new_zeros(b, p)
    pos = input_ids.new_zeros(b, p)
    segment = input_ids.new_full((b, p), -1)  # 0 prompt, 1 chosen tail, 2 rejected tail, -1 padding
    shift = labels.new_full((b, p), -100)
    index = torch.zeros(rows, width - 1, dtype=torch.long, device=input_ids.device)
    valid = torch.zeros(rows, width - 1, dtype=torch.bool, device=input_ids.device)
    next_labels = torch.cat([labels[:, 1:], labels.new_full((rows, 1), -100)], 1)
    for i in range(b):
        c, r, s = int(len_c[i]), int(len_r[i]), int(shared[i])
        tail = r - s + 1  # the rejected answer with the last shared token before it
        ids[i, :c] = input_ids[i, :c]
        ids[i, c:c + tail] = input_ids[b + i, s - 1:r]
        pos[i, :c] = positions[:c]
        pos[i, c:c + tail] = positions[s - 1:r]
        segment[i, :s - 1] = 0
        segment[i, s - 1:c] = 1
        segment[i, c:c + tail] = 2
        shift[i, :c] = next_labels[i, :c]
        shift[i, c:c + tail] = next_labels[b + i, s - 1:r]
        index[i, :c - 1] = positions[:c - 1]
        valid[i, :c - 1] = True
        index[b + i, s - 1:r - 1] = c + positions[:r - s]
        valid[b + i, s - 1:r - 1] = True
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(p, p, dtype=torch.bool, device=input_ids.device).tril()
    allowed = causal & (query >= 0) & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(p, dtype=torch.bool, device=input_ids.device)  # a padding row attends to itself (no NaN)
    return {"input_ids": ids, "position_ids": pos, "allowed": allowed[:, None], "shift_labels": shift,
            "index": index, "valid": valid}


#: the fewest shared first tokens worth a forward of their own
MIN_COMMON_PREFIX = 16


def common_prefix(packing) -> int:
    """How many first tokens every packed row of a batch shares (ids and positions), none of them scored: the part
    computed once and given to every row as its key-value cache (a system prompt, the same for every example).

    Args:
        packing: :func:`pack_pairs`' result for ``B`` pairs.

    Returns:
        ``k``, or 0 when the batch has one row or fewer than :data:`MIN_COMMON_PREFIX` such tokens.  No output is
        scored before ``k`` (``shift_labels`` -100 there), so the rows' outputs from ``k`` on are all the loss reads.
    """
    ids, shift = packing["input_ids"], packing["shift_labels"]
    if ids.size(0) < 2:
        return 0
    same = (ids == ids[:1]).all(0) & (packing["position_ids"] == packing["position_ids"][:1]).all(0)
    same &= (shift == -100).all(0)  # nothing scored: an output there is the fused head's 0 in every row
    k = int(same.int().cumprod(0).sum())
    return k if k >= MIN_COMMON_PREFIX and k < ids.size(1) else 0


def plain_attention(config) -> bool:
    """Whether every layer of ``config``'s text model attends to all earlier tokens with positions that do not depend
    on the length of the call: no sliding window or chunked attention (``sliding_window``, ``layer_types``,
    ``attention_chunk_size``) and no length-dependent rotary scaling (``dynamic``, ``longrope``).  A cache of shared
    first tokens, computed in a call of its own, then gives the rows what they would compute themselves."""
    text = config.get_text_config()
    if getattr(text, "sliding_window", None) is not None or getattr(text, "attention_chunk_size", None):
        return False
    if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or ())):
        return False
    rope = [getattr(text, name, None) for name in ("rope_parameters", "rope_scaling")]
    return not any(isinstance(r, dict) and r.get("rope_type", r.get("type")) in ("dynamic", "longrope") for r in rope)


def _cache_unsafe(model) -> bool:
    """Whether a training forward of ``model`` cannot take the shared tokens as a cache: a layer recomputed in the
    backward (transformers' gradient checkpointing, PyTorch's ``CheckpointWrapper``: the recompute drops or re-appends
    a passed cache), parameters sharded across processes (FSDP, DeepSpeed ZeRO: ranks whose batches share different
    starts would make different numbers of gathering calls), or dropout (one mask for the shared tokens of every
    row)."""
    import torch

    if not (model.training and torch.is_grad_enabled()):
        return False
    for m in model.modules():
        name = type(m).__name__
        if (getattr(m, "gradient_checkpointing", False) or name == "CheckpointWrapper" or "FullyShard" in name
                or name.startswith("FSDP") or (isinstance(m, torch.nn.Dropout) and m.p > 0)):
            return True
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _unpack(value, packing):
    """A packed per-token output ``(B, P)`` laid out as TRL's ``(2B, L - 1)`` rows (0 where nothing is scored)."""
    if value is None:
        return None
    source = value.repeat(2, 1)  # row k of the 2B rows reads pair k mod B
    picked = source.gather(1, packing["index"])
    return picked.masked_fill(~packing["valid"], 0)


def share_prompts(model: Any) -> bool:
    """Answer ``model``'s fused-head calls on ``[chosen; rejected]`` batches with one packed row per pair.

    Args:
        model: the transformers model whose ``forward`` TRL's ``add_fused_lm_head`` replaced (the base model under a
            PEFT wrapper; DPOTrainer adds the head when it is built, sllmx's ORPO build after TRL's trainer is).

    Returns:
        True when installed (or already), False when the model has no fused head, its attention kernel is not one
        of :data:`KERNELS` or its architecture not one of :data:`ARCHITECTURES` (nothing changed).
    """
    fused = getattr(model, "forward", None)
    if getattr(fused, "sllmx_shared_prompt", False):
        return True
    config = getattr(model, "config", None)
    kernel = getattr(config, "_attn_implementation", None)
    if fused is None or "forward" not in vars(model) or kernel not in KERNELS or config is None:
        return False
    text = config.get_text_config()
    if getattr(text, "model_type", None) not in ARCHITECTURES or getattr(text, "output_router_logits", False):
        return False
    window = getattr(text, "sliding_window", None)
    import inspect

    plain = plain_attention(config)
    backbone_forward = type(getattr(model, "base_model")).forward
    cache_kwarg = "cache" if "cache" in inspect.signature(backbone_forward).parameters else "past_key_values"

    @functools.wraps(fused)
    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        packing = None
        if (fused_lm_head and not args and labels is not None and kwargs.get("input_ids") is not None
                and kwargs.get("position_ids") is None and kwargs.get("inputs_embeds") is None
                and kwargs.get("past_key_values") is None and kwargs.get("cache") is None
                and not kwargs.get("output_router_logits")
                and "shift_labels" not in kwargs):
            packing = pack_pairs(kwargs["input_ids"], kwargs.get("attention_mask"), labels)
            if packing is not None and window is not None and packing["input_ids"].size(1) > window:
                packing = None
        if packing is None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        import torch

        allowed = packing["allowed"]
        if kernel == "eager":
            dtype = model.get_input_embeddings().weight.dtype
            if torch.is_autocast_enabled("cpu") or not dtype.is_floating_point:
                dtype = torch.float32
            allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        ids, positions, shift = packing["input_ids"], packing["position_ids"], packing["shift_labels"]
        k = common_prefix(packing) if plain and not _cache_unsafe(model) else 0
        if k:
            # the batch's shared first tokens (a system prompt) once: their keys and values, computed from one row,
            # are every row's cache, and the rows run from token k on
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
            # the shared tokens are prompt tokens of every row, so their mask is the rows' own (causal) one
            getattr(model, "base_model")(input_ids=ids[:1, :k], position_ids=positions[:1, :k],
                                         attention_mask=allowed[:1, :, :k, :k], **{cache_kwarg: cache}, use_cache=True)
            cache.batch_repeat_interleave(ids.size(0))
            kwargs[cache_kwarg] = cache
            ids, positions, shift, allowed = ids[:, k:], positions[:, k:], shift[:, k:], allowed[:, :, k:]
        kwargs.update(input_ids=ids, attention_mask=allowed, position_ids=positions)
        out = fused(fused_lm_head=True, shift_labels=shift, **kwargs)
        for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            value = getattr(out, name, None)
            if value is not None:
                if k:  # nothing is scored in the shared tokens: the fused head's 0 there
                    value = torch.cat([value.new_zeros(value.size(0), k), value], 1)
                setattr(out, name, _unpack(value, packing))
        return out

    forward.sllmx_shared_prompt = True
    model.forward = forward
    return True
