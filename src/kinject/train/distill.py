"""Prompt distillation (Kujanpää et al. 2024, arXiv 2412.14964): teach a model what it knows when
it reads a chunk, so it knows it closed-book.

For each training pair (question, answer, chunk) of the SFT machinery, the *teacher* is the
frozen model with the chunk before the question (the RAG prompt) and the *student* the model
being trained, asked the same question without it. Both are teacher-forced on the reference
answer (or on the teacher's own greedy answer, `finetune.distill.target: teacher`); the loss is
KL(teacher ‖ student) over the answer tokens and EOS, both softened by a
temperature T and scaled by T². The teacher's logits are computed once, in their own cached
stage, and only the top k per token are kept (the teacher's distribution renormalised over
them), so a learning-rate search and every seed reuse them.

Knowledge modules (deep context distillation; Caccia et al., COLM 2025, arXiv 2503.08727): the
same, plus the student's hidden states at chosen layers pulled toward the teacher's at the same
positions (L1, scaled by the teacher's mean absolute activation per layer), one LoRA adapter per
knowledge base. The teacher's hidden states at the answer positions are cached with its logits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kinject.core.errors import KinjectError

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk
    from kinject.synth.trainpairs import QAPair
    from kinject.tasks.task import Task

Targets = tuple[torch.Tensor, ...]
"""One example's teacher: top-k token ids (int32, [answer tokens, k]), their logits (fp16) and,
for knowledge modules, its hidden states at the matched layers (fp16, [answer tokens, layers, d])."""
TARGETS_FILE = "targets.pt"
LAYERS_FILE = "layers.json"
"""The hidden layers a knowledge module's teacher stage cached (absent: logits only)."""
EXAMPLES_FILE = "examples.json"
"""The student's (prompt, answer) rows, in the targets' order."""


def distill_examples(task: "Task", pairs: Sequence["QAPair"], chunks: dict[str, "Chunk"]
                     ) -> list[tuple[str, str, str]]:
    """(student prompt, teacher prompt, answer) per pair, in the task's own prompt format: the
    student is asked as in SFT, the teacher as in RAG, with the pair's chunk before the question."""
    from kinject.synth.trainpairs import sft_example

    out = []
    for p in pairs:
        chunk = chunks.get(p.chunk_id)
        if chunk is None:
            raise KinjectError(f"training pair '{p.question[:60]}' names chunk {p.chunk_id}, which the knowledge "
                               f"base does not hold; rebuild the pairs")
        student, answer = sft_example(task, p)
        teacher, _ = sft_example(task, p, (chunk.text,))
        out.append((student, teacher, answer))
    return out


@dataclass(frozen=True)
class Objective:
    """What a distilled student is trained to match: the teacher's answer distributions at
    `temperature`, and (knowledge modules) its hidden states at `layers`, weighted by `hidden_weight`."""

    temperature: float = 1.0
    layers: tuple[int, ...] = ()
    """hidden_states indices (1 = after the first block); empty: outputs only (prompt distillation)."""
    hidden_weight: float = 1.0


def hidden_layers(n: int, wanted: Sequence[int] | None) -> tuple[int, ...]:
    """The layers a knowledge module matches in a model of `n` blocks: `wanted`, or every block's
    output when None; an index beyond the blocks is refused with the count (the plan checks this
    before any stage runs, the teacher stage again with the model loaded)."""
    if wanted is None:
        return tuple(range(1, n + 1))
    bad = [i for i in wanted if not 1 <= i <= n]
    if bad:
        raise KinjectError(f"finetune.distill.layers: {bad[0]} is out of range; the model has {n} layers (use 1..{n})")
    return tuple(sorted(set(wanted)))


def _ids(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """BOS + prompt and completion + EOS token ids, as `kinject.train.finetune.encode_examples` cuts them."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return bos + tok(prompt, add_special_tokens=False)["input_ids"], \
        tok(completion, add_special_tokens=False)["input_ids"] + eos


@torch.no_grad()
def teacher_targets(model, tok, examples: Sequence[tuple[str, str, str]], top_k: int,
                    progress: Callable[[int], None] = lambda n: None, layers: Sequence[int] = ()) -> list[Targets]:
    """The teacher's top-k logits at each answer token (and EOS) of each example, and its hidden
    states there at `layers`, computed one
    example at a time (no padding, so no example's numbers depend on another's). A teacher
    prompt beyond the model's context window is refused with its size: cutting the chunk would
    teach the student a teacher that did not read it."""
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    device = model.get_input_embeddings().weight.device
    model.eval()
    out: list[Targets] = []
    for i, (_, teacher, answer) in enumerate(examples):
        prompt, completion = _ids(tok, teacher, answer)
        if len(prompt) + len(completion) > context:
            raise KinjectError(f"distill: example {i} ('{teacher[-80:].strip()}') needs {len(prompt) + len(completion)} "
                               f"tokens with its chunk, beyond the model's {context}; use smaller chunks "
                               f"(knowledge_bases.<kb>.chunk_tokens)")
        ids = torch.tensor([prompt + completion], device=device)
        res = model(input_ids=ids, output_hidden_states=bool(layers))
        at = slice(len(prompt) - 1, ids.shape[1] - 1)  # the positions predicting each answer token
        logits = res.logits[0, at].float()
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        kept = (top.indices.to(torch.int32).cpu(), top.values.to(torch.float16).cpu())
        if layers:
            kept += (torch.stack([res.hidden_states[i][0, at] for i in layers], dim=1).to(torch.float16).cpu(),)
        out.append(kept)
        progress(1)
    return out


@torch.no_grad()
def teacher_answers(model, tok, examples: Sequence[tuple[str, str, str]], max_tokens: int = 24,
                    progress: Callable[[int], None] = lambda n: None) -> list[tuple[str, str, str]]:
    """The examples with the teacher's own greedy answer (first line, " "-led like a reference
    continuation) in place of the reference; an empty reply keeps the reference."""
    device = model.get_input_embeddings().weight.device
    eos = tok.eos_token_id
    out = []
    for student, teacher, reference in examples:
        prompt, _ = _ids(tok, teacher, "")
        ids = torch.tensor([prompt], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
        said = tok.decode(gen[0, len(prompt):], skip_special_tokens=True).strip().split("\n", 1)[0].strip()
        out.append((student, teacher, f" {said}" if said else reference))
        progress(1)
    return out


def save_targets(folder: Path, targets: Sequence[Targets], layers: Sequence[int] = ()) -> None:
    """The teacher stage's files: the targets, and the matched layers when hidden states are in them."""
    torch.save([tuple(t) for t in targets], folder / TARGETS_FILE)
    if layers:
        (folder / LAYERS_FILE).write_text(json.dumps(list(layers)))


def load_targets(folder: Path) -> tuple[list[Targets], tuple[int, ...]]:
    """The cached targets and the hidden layers they hold (empty: logits only)."""
    layers = json.loads((folder / LAYERS_FILE).read_text()) if (folder / LAYERS_FILE).is_file() else []
    return [tuple(t) for t in torch.load(folder / TARGETS_FILE, weights_only=True)], tuple(layers)


def kl_loss(logits: torch.Tensor, labels: torch.Tensor, targets: Sequence[Targets], temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) per answer token, averaged, times T². `logits` [B, L, V] are the
    student's; `labels` [B, L] mark the answer tokens (others -100); `targets` hold each row's
    teacher top-k for its answer tokens, in order."""
    pred = logits[:, :-1][labels[:, 1:] != -100]  # [N, V]: the positions that predict an answer token
    idx = torch.cat([t[0] for t in targets]).to(pred.device, torch.long)
    teacher = torch.cat([t[1].float() for t in targets]).to(pred.device)  # fp32 first: bf16 autocast refuses fp16
    if idx.shape[0] != pred.shape[0]:
        raise KinjectError(f"distill: {idx.shape[0]} teacher tokens for {pred.shape[0]} answer tokens; the cached "
                           f"teacher logits belong to other pairs or another tokenizer: rerun without the cache")
    student = torch.log_softmax(pred.float() / temperature, dim=-1).gather(1, idx)
    p = torch.log_softmax(teacher / temperature, dim=-1)
    return (p.exp() * (p - student)).sum(-1).mean() * temperature ** 2


def hidden_loss(hidden_states: Sequence[torch.Tensor], labels: torch.Tensor, targets: Sequence[Targets],
                layers: Sequence[int]) -> torch.Tensor:
    """Deep context distillation's hidden-state term: per matched layer, the mean L1 distance of
    the student's states to the teacher's at the positions predicting answer tokens, divided by
    the teacher's mean absolute state there (so every layer weighs alike), averaged over layers."""
    at = labels[:, 1:] != -100
    teacher = torch.cat([t[2].float() for t in targets]).to(labels.device)  # [N, layers, d]
    terms = []
    for j, layer in enumerate(layers):
        student = hidden_states[layer][:, :-1][at].float()
        if student.shape[0] != teacher.shape[0]:
            raise KinjectError(f"kmodule: {teacher.shape[0]} teacher states for {student.shape[0]} answer tokens; "
                               f"rebuild the teacher stage")
        terms.append((student - teacher[:, j]).abs().mean() / teacher[:, j].abs().mean().clamp_min(1e-6))
    return torch.stack(terms).mean()


def distill_loss(model, ids: torch.Tensor, labels: torch.Tensor, targets: Sequence[Targets], objective: Objective,
                 **extra) -> torch.Tensor:
    """The student's loss on one batch: KL to the teacher's answer distributions, plus the
    weighted hidden-state term for a knowledge module."""
    out = model(input_ids=ids, output_hidden_states=bool(objective.layers), **extra)
    loss = kl_loss(out.logits, labels, targets, objective.temperature)
    if objective.layers:
        loss = loss + objective.hidden_weight * hidden_loss(out.hidden_states, labels, targets, objective.layers)
    return loss
