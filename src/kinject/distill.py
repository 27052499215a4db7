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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kinject.errors import KinjectError

if TYPE_CHECKING:
    from kinject.corpus import Chunk
    from kinject.tasks import Task
    from kinject.trainpairs import QAPair

Targets = tuple[torch.Tensor, torch.Tensor]
"""One example's teacher: top-k token ids (int32, [answer tokens, k]) and their logits (fp16)."""
TARGETS_FILE = "targets.pt"
EXAMPLES_FILE = "examples.json"
"""The student's (prompt, answer) rows, in the targets' order."""


def distill_examples(task: "Task", pairs: Sequence["QAPair"], chunks: dict[str, "Chunk"]
                     ) -> list[tuple[str, str, str]]:
    """(student prompt, teacher prompt, answer) per pair, in the task's own prompt format: the
    student is asked as in SFT, the teacher as in RAG, with the pair's chunk before the question."""
    from kinject.trainpairs import sft_example

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


def _ids(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """BOS + prompt and completion + EOS token ids, as `kinject.finetune.encode_examples` cuts them."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return bos + tok(prompt, add_special_tokens=False)["input_ids"], \
        tok(completion, add_special_tokens=False)["input_ids"] + eos


@torch.no_grad()
def teacher_targets(model, tok, examples: Sequence[tuple[str, str, str]], top_k: int,
                    progress: Callable[[int], None] = lambda n: None) -> list[Targets]:
    """The teacher's top-k logits at each answer token (and EOS) of each example, computed one
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
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # predicting each answer token
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        out.append((top.indices.to(torch.int32).cpu(), top.values.to(torch.float16).cpu()))
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


def save_targets(path: Path, targets: Sequence[Targets]) -> None:
    torch.save([(i, v) for i, v in targets], path)


def load_targets(path: Path) -> list[Targets]:
    return [(i, v) for i, v in torch.load(path, weights_only=True)]


def kl_loss(logits: torch.Tensor, labels: torch.Tensor, targets: Sequence[Targets], temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) per answer token, averaged, times T². `logits` [B, L, V] are the
    student's; `labels` [B, L] mark the answer tokens (others -100); `targets` hold each row's
    teacher top-k for its answer tokens, in order."""
    pred = logits[:, :-1][labels[:, 1:] != -100]  # [N, V]: the positions that predict an answer token
    idx = torch.cat([t[0] for t in targets]).to(pred.device, torch.long)
    teacher = torch.cat([t[1] for t in targets]).to(pred.device, torch.float32)
    if idx.shape[0] != pred.shape[0]:
        raise KinjectError(f"distill: {idx.shape[0]} teacher tokens for {pred.shape[0]} answer tokens; the cached "
                           f"teacher logits belong to other pairs or another tokenizer: rerun without the cache")
    student = torch.log_softmax(pred.float() / temperature, dim=-1).gather(1, idx)
    p = torch.log_softmax(teacher / temperature, dim=-1)
    return (p.exp() * (p - student)).sum(-1).mean() * temperature ** 2
