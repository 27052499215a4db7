"""Log-likelihood scoring of multiple-choice prompts: the only place an LM runs for scores.

Same numbers as lm-evaluation-harness (`loglikelihood` requests on the hf backend): the
context/continuation split, tokenisation and is-greedy rule are lm-eval's. Faster because it
never forwards a token twice and never computes logits it does not need:

* questions of one subject share their few-shot prefix: it is forwarded once and its KV cache
  reused for every question of the group;
* a question's context is forwarded once for all its options (one forward per question when
  every option is one token, as for MMLU letters); multi-token options continue from the
  context's KV cache, all options of a question packed in one row under a 4D mask;
* questions are batched sorted by length, right-padded so padding follows every real token;
* the LM head runs only at the positions that predict continuation tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from kinject.core.errors import KinjectError
from kinject.core.stats import mean_stderr
from kinject.tasks.task import Prompt, Task, render, select

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MIN_SHARED_PREFIX = 32
"""Shared prefixes shorter than this (tokens) are not worth a separate cached forward."""


@dataclass(frozen=True)
class Scored:
    """Per-choice summed log-probabilities of the continuation and whether it is the greedy one."""

    logliks: tuple[float, ...]
    greedy: tuple[bool, ...]


@dataclass
class _Encoded:
    index: int
    context: list[int]
    continuations: list[list[int]]


def encode(tok: "PreTrainedTokenizerBase", prompt: Prompt, max_length: int) -> tuple[list[int], list[list[int]]]:
    """Token ids of the context and of each continuation, split exactly as lm-eval splits them.

    Trailing spaces of the context move to the continuation; the continuation's tokens are
    those of `context + continuation` beyond the context's own token count.
    """
    ctx = prompt.context
    n_spaces = len(ctx) - len(ctx.rstrip())
    moved, ctx = (ctx[-n_spaces:], ctx[:-n_spaces]) if n_spaces else ("", ctx)
    if ctx:
        ctx_ids = tok(ctx)["input_ids"]
        conts = [tok(ctx + moved + c)["input_ids"][len(ctx_ids):] for c in prompt.continuations]
    else:  # lm-eval scores an empty context from the BOS/EOS token
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ctx_ids = [prefix]
        conts = [tok(moved + c, add_special_tokens=False)["input_ids"] for c in prompt.continuations]
    if any(not c for c in conts):
        raise KinjectError(f"a continuation of {prompt.context[-60:]!r} encodes to no tokens")
    longest = max(len(c) for c in conts)
    if len(ctx_ids) + longest > max_length + 1:  # lm-eval keeps the last max_length+1 tokens
        ctx_ids = ctx_ids[-(max_length + 1 - longest):]
    return ctx_ids, conts


def model_max_length(model: "PreTrainedModel", tok: "PreTrainedTokenizerBase") -> int:
    """The longest input the model takes, from its config, else its tokenizer (2048 if unset)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if hasattr(model.config, attr):
            return int(getattr(model.config, attr))
    return int(tok.model_max_length) if tok.model_max_length < 10**8 else 2048


class _Head:
    """Hidden states → log-probabilities, for the selected rows only."""

    def __init__(self, model: "PreTrainedModel") -> None:
        self.proj = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float().log_softmax(-1)


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    first = min(seqs, key=len)
    n = len(first)
    for s in seqs:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _pad(rows: Sequence[list[int]], pad_id: int, device: torch.device | None = None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


PAD_SLACK = 0.8
"""A batch only takes contexts at least this fraction of its longest one: bounded padding."""


def _batches(members: list[_Encoded], batch_size: int, window: int | None = None) -> list[list[_Encoded]]:
    """Longest first, at most `batch_size` per batch, padding under 1 - PAD_SLACK per row.

    Sliding-window attention (Gemma 3) keeps only the last `window` cache slots and measures
    the window from padded positions, so sequences that reach the window are only batched
    with contexts of exactly their length (no padding)."""
    ordered = sorted(members, key=lambda m: (-len(m.context), m.index))
    batches: list[list[_Encoded]] = []
    for m in ordered:
        if batches and len(batches[-1]) < batch_size:
            first = batches[-1][0]
            reaches = window is not None and len(first.context) + max(len(c) for c in first.continuations) >= window
            fits = len(m.context) == len(first.context) if reaches else (
                len(m.context) >= PAD_SLACK * len(first.context))
            if fits:
                batches[-1].append(m)
                continue
        batches.append([m])
    return batches


def score(
    model: "PreTrainedModel",
    tok: "PreTrainedTokenizerBase",
    prompts: Sequence[Prompt],
    groups: Sequence[str | None] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Scored]:
    """Score every prompt's continuations. `groups` (e.g. subjects) say which prompts may share
    a few-shot prefix; `progress(n)` is called as n more prompts finish."""
    results = score_shard(model, tok, prompts, groups, batch_size, progress)
    return [results[i] for i in range(len(prompts))]


def score_shard(
    model: "PreTrainedModel",
    tok: "PreTrainedTokenizerBase",
    prompts: Sequence[Prompt],
    groups: Sequence[str | None] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] = lambda n: None,
    shard: tuple[int, int] = (0, 1),
) -> dict[int, Scored]:
    """`score` for one data-parallel shard (rank, world): prompt index → Scored for the batches of
    this rank. Batches are planned over all prompts first and dealt out whole, so every prompt is
    scored in the same batch, with the same padding, as in a single process: the gathered
    results are bit-identical to `score`'s."""
    if batch_size < 1:
        raise KinjectError(f"--batch-size must be at least 1, got {batch_size}")
    max_length = model_max_length(model, tok)
    encoded = [_Encoded(i, *encode(tok, p, max_length)) for i, p in enumerate(prompts)]
    by_group: dict[str | None, list[_Encoded]] = {}
    for e, g in zip(encoded, groups or [None] * len(encoded)):
        by_group.setdefault(g, []).append(e)
    head = _Head(model)
    body = model.base_model
    window = getattr(model.config, "sliding_window", None)
    device = model.get_input_embeddings().weight.device  # the first layer's device under device_map=auto
    rank, world = shard
    results: dict[int, Scored] = {}
    dealt = 0
    with torch.inference_mode():
        for members in by_group.values():
            batches = _batches(members, batch_size, window)
            mine = [b for j, b in enumerate(batches) if (dealt + j) % world == rank]
            dealt += len(batches)
            if mine:
                _score_group(body, head, members, mine, results, progress, window, device)
    return results


def _score_group(body, head: _Head, members: list[_Encoded], batches: list[list[_Encoded]],
                 results: dict[int, Scored], progress: Callable[[int], None], window: int | None,
                 device: torch.device) -> None:
    """Score `batches` (planned over all `members`, whose common prefix is forwarded once)."""
    # The prefix must leave at least one context token per member: its logits predict option 1.
    shared = min(_common_prefix([m.context for m in members]), min(len(m.context) for m in members) - 1)
    prefix_cache = None
    if shared >= MIN_SHARED_PREFIX:
        prefix_cache = body(input_ids=torch.tensor([members[0].context[:shared]], device=device),
                            use_cache=True).past_key_values
    else:
        shared = 0

    def cache_for(n: int):
        if prefix_cache is None:
            return None
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
        return cache

    # Questions in batches sorted by length: contexts right-padded in one forward (padding
    # follows every real token, so causal attention never sees it), then every option's
    # remaining tokens in a second forward over the contexts' KV cache, padding masked out.
    # Log-probabilities come back to the CPU once per batch: reading them element by element on
    # a GPU would synchronise per token.
    for batch in batches:
        suffixes = [m.context[shared:] for m in batch]
        out = body(input_ids=_pad(suffixes, 0, device), past_key_values=cache_for(len(batch)), use_cache=True)
        ends = [len(s) - 1 for s in suffixes]
        hidden = out.last_hidden_state
        first = head(hidden[torch.arange(len(batch), device=hidden.device),
                            torch.tensor(ends, device=hidden.device)]).cpu()
        tails = [[c[:-1] for c in m.continuations] for m in batch]
        tail_lp = None
        if any(t for row in tails for t in row):
            ctx_lens = [shared + len(s) for s in suffixes]
            run = _tails_packed if window is None else _tails_expanded
            hidden, rows = run(body, out.past_key_values, tails, ctx_lens, shared + max(len(s) for s in suffixes),
                               device)
            tail_lp = head(hidden[torch.tensor([r for r, _ in rows], device=hidden.device),
                                  torch.tensor([j for _, j in rows], device=hidden.device)]).cpu()
        k = 0
        for b, m in enumerate(batch):
            best_first = int(first[b].argmax())
            logliks, greedy = [], []
            for cont in m.continuations:
                lp, is_greedy = float(first[b, cont[0]]), best_first == cont[0]
                for tok_id in cont[1:]:
                    row = tail_lp[k]  # type: ignore[index]
                    lp += float(row[tok_id])
                    is_greedy = is_greedy and int(row.argmax()) == tok_id
                    k += 1
                logliks.append(lp)
                greedy.append(is_greedy)
            results[m.index] = Scored(tuple(logliks), tuple(greedy))
        progress(len(batch))


def _tails_packed(body, cache, tails: list[list[list[int]]], ctx_lens: list[int], ctx_width: int,
                  device: torch.device):
    """All option tails of a question in one row after its context: a 4D mask lets each tail see
    the context and itself only, positions restart at the context length. The KV cache stays
    one row per question (no copy per option). Returns hidden states and the (row, column)
    of every tail token, in question → option → token order."""
    rows = [[t for tail in q for t in tail] for q in tails]
    width = max(len(r) for r in rows)
    allowed = torch.zeros(len(rows), 1, width, ctx_width + width, dtype=torch.bool)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    picks: list[tuple[int, int]] = []
    for b, q in enumerate(tails):
        allowed[b, 0, :, :ctx_lens[b]] = True  # padding rows too: a row that sees nothing is NaN
        start = 0
        for tail in q:
            for j in range(len(tail)):
                allowed[b, 0, start + j, ctx_width + start:ctx_width + start + j + 1] = True
                positions[b, start + j] = ctx_lens[b] + j
                picks.append((b, start + j))
            start += len(tail)
    dtype = body.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    hidden = body(input_ids=_pad(rows, 0, device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  past_key_values=cache, use_cache=True).last_hidden_state
    return hidden, picks


def _tails_expanded(body, cache, tails: list[list[list[int]]], ctx_lens: list[int], ctx_width: int,
                    device: torch.device):
    """One row per option over a copy of its question's KV cache, padding masked in 2D: for
    sliding-window models, whose per-layer masks a custom 4D mask would override."""
    owner = [b for b, q in enumerate(tails) for _ in q]
    flat = [t for q in tails for t in q]
    cache.batch_select_indices(torch.tensor(owner))  # a CPU index selects on any device, layer by layer
    width = max(len(t) for t in flat)
    mask = torch.zeros(len(flat), ctx_width + width, dtype=torch.long)
    positions = torch.zeros(len(flat), width, dtype=torch.long)
    for r, b in enumerate(owner):
        mask[r, :ctx_lens[b]] = 1
        mask[r, ctx_width:] = 1
        positions[r] = torch.arange(ctx_lens[b], ctx_lens[b] + width)
    hidden = body(input_ids=_pad(flat, 0, device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  past_key_values=cache, use_cache=True).last_hidden_state
    return hidden, [(r, j) for r, t in enumerate(flat) for j in range(len(t))]


# ---------------------------------------------------------------------------- metrics


def predictions(scored: Scored, choice_texts: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm): argmax of log-likelihood, and of log-likelihood per character of the
    choice text — lm-eval's acc_norm divides by `len(choice)`, the string's length."""
    lls = scored.logliks
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
    norm = [ll / len(t) for ll, t in zip(lls, choice_texts)]
    pred_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return pred, pred_norm


# ---------------------------------------------------------------------------- a task end to end


@dataclass(frozen=True)
class Record:
    """One scored question, as written to samples JSONL."""

    id: str
    subject: str | None
    context: str
    continuations: tuple[str, ...]
    logliks: tuple[float, ...]
    greedy: tuple[bool, ...]
    gold: int
    pred: int
    pred_norm: int
    retrieved: tuple[str, ...] = ()
    """Ids of the chunks put into the prompt (RAG), best first."""
    cited: tuple[str, ...] = ()
    """Where each of those chunks comes from: "manual.pdf p. 12 · Setup › Requirements"."""
    free: dict | None = None
    """A free-form (`@free`) question's generated answer and its grades (`kinject.eval.freeform`)."""

    @property
    def acc(self) -> float:
        """1.0 when the prediction is the gold option."""
        return float(self.pred == self.gold)

    @property
    def acc_norm(self) -> float:
        """1.0 when the length-normalised prediction is the gold option."""
        return float(self.pred_norm == self.gold)


def summarize(records: Sequence[Record]) -> dict[str, float | int]:
    """Accuracy and length-normalised accuracy, with standard errors, over the records."""
    acc, acc_se = mean_stderr([r.acc for r in records])
    norm, norm_se = mean_stderr([r.acc_norm for r in records])
    return {"n": len(records), "acc": acc, "acc_stderr": acc_se, "acc_norm": norm, "acc_norm_stderr": norm_se}


class LogLikelihoods(Protocol):
    """The part of a backend (`kinject.lm.backends`) that evaluation needs."""

    def loglikelihood(self, prompts: Sequence[Prompt], groups: Sequence[str | None] | None = None,
                      progress: Callable[[int], None] = lambda n: None) -> list[Scored]:
        """Each prompt's options scored, in prompt order."""
        ...


def evaluate(
    lm: LogLikelihoods,
    task: Task,
    shots: int = 0,
    limit: int | None = None,
    passages: Sequence[Sequence[tuple[str, str]]] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Record]:
    """Score a task's items (the first `limit` per subject) with a backend, one record per item.

    `passages[i]` are (chunk id, text) pairs put before item i's question (RAG)."""
    items = select(task, limit)
    retrieved = [tuple(p for p, _ in passages[i]) if passages else () for i in range(len(items))]
    prompts = [render(task, it, shots, tuple(t for _, t in passages[i]) if passages else ())
               for i, it in enumerate(items)]
    scored = lm.loglikelihood(prompts, [f"{it.subject}" for it in items], progress)
    records = []
    for it, p, s, ids in zip(items, prompts, scored, retrieved):
        pred, pred_norm = predictions(s, p.choice_texts)
        records.append(Record(it.id, it.subject, p.context, p.continuations, s.logliks, s.greedy,
                              it.gold, pred, pred_norm, ids))
    return records
