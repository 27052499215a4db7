"""Knowledge-injection method names: the one parser and the names a reader sees.

A method is `base`, `rag`, or a fine-tuning recipe with optional suffixes:

  recipe    ft | lora            continued pre-training on the chunks (the paper's FT; LoRA adapter)
            ft-par:N             ... on the chunks and N paraphrases of each (the paper's FT-par)
            sft | sft-lora       supervised fine-tuning on QA pairs from the chunks, loss on answers
            raft | raft-lora     RAFT: question + oracle chunk + distractor chunks → answer; always
                                 evaluated with retrieval
            distill | distill-lora  prompt distillation: the model without the chunk matches its own
                                 answer distributions with the chunk in the prompt
            kmodule              a knowledge module: distill-lora plus the teacher's hidden states
  +replay   general text mixed into the training data (`finetune.replay`)
  +rag      retrieved chunks in the prompt at evaluation

This module owns that grammar (`parse_method`, used by the config check and the stage graph of
`kinject run`) and everything derived from a parsed name: its trained model variant and whether
chunks are retrieved (`family`), the labels of the report ('FT-par N=5+RAG K=1', 'RAFT K=3'),
and the paper's headline columns with the condition chosen for each (`headlines`: best K, best
N) and their order by deployment cost (`cost_rank`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kinject.eval.results import Condition

Recipe = Literal["cpt", "sft", "raft", "distill", "kmodule"]
DISTILLED = ("distill", "kmodule")
"""The recipes trained against a teacher reading the chunk (a cached teacher stage)."""

_METHOD = re.compile(r"^(?:(?P<plain>base|rag)|(?P<kind>ft|lora|sft|sft-lora|raft|raft-lora|distill|distill-lora|kmodule)"
                     r"(?:-par:(?P<n>\d+))?"
                     r"(?P<replay>\+replay)?(?P<rag>\+rag)?)$")
_KINDS = {"ft": ("cpt", "full"), "lora": ("cpt", "lora"), "sft": ("sft", "full"), "sft-lora": ("sft", "lora"),
          "raft": ("raft", "full"), "raft-lora": ("raft", "lora"), "distill": ("distill", "full"),
          "distill-lora": ("distill", "lora"), "kmodule": ("kmodule", "lora")}
GRAMMAR = ("base, rag, ft, ft+rag, ft-par:N, lora, sft, sft+rag, sft-lora, raft, raft-lora, distill, distill+rag, "
           "distill-lora, kmodule or kmodule+rag; a fine-tuned one may add +replay (e.g. ft+replay+rag)")


@dataclass(frozen=True)
class Method:
    """A knowledge-injection method: which model variant, and whether chunks are retrieved."""

    name: str
    ft: Literal["full", "lora"] | None
    paraphrases: int
    rag: bool
    recipe: Recipe = "cpt"
    """cpt: continued pre-training; sft: QA pairs, loss on answers; raft: QA with oracle + distractors;
    distill: the model without the chunk matches itself reading it (prompt distillation);
    kmodule: the same in a LoRA adapter, hidden states as well (a knowledge module)."""
    replay: bool = False

    @property
    def family(self) -> str:
        """The trained model variant: 'base', 'ft', 'ft-par:N', 'lora', 'sft', 'raft-lora', 'ft+replay', ..."""
        if self.ft is None:
            return "base"
        kind = next(k for k, v in _KINDS.items() if v == (self.recipe, self.ft))
        par = f"-par:{self.paraphrases}" if self.paraphrases else ""
        return kind + par + ("+replay" if self.replay else "")


def parse_method(name: str) -> Method:
    """A method name parsed into its recipe, adapter, paraphrases and retrieval (ValueError if malformed)."""
    m = _METHOD.match(name.strip())
    if not m:
        raise ValueError(f"unknown method '{name}'; use {GRAMMAR}")
    if m["plain"]:
        return Method(name, None, 0, m["plain"] == "rag")
    recipe, adapter = _KINDS[m["kind"]]
    if m["n"] is not None and m["kind"] != "ft":  # the report's paraphrase columns and plot are FT-par's
        raise ValueError(f"method '{name}': paraphrase training is full continued pre-training only; "
                         f"use ft-par:{m['n']}")
    if recipe == "raft" and m["rag"]:
        raise ValueError(f"method '{name}': RAFT is always evaluated with retrieval; write "
                         f"{name.replace('+rag', '')}")
    n = int(m["n"] or 0)
    if m["n"] is not None and n < 1:
        raise ValueError(f"method '{name}': the paraphrase count must be at least 1")
    return Method(name, adapter, n, bool(m["rag"]) or recipe == "raft", recipe, bool(m["replay"]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ names


def family(method: str) -> tuple[str, bool]:
    """(the model variant: 'base' | 'ft' | 'ft-par:N' | 'sft' | ..., whether retrieved chunks are in the
    prompt). A name this version does not know (a store written by another one) is its own closed-book
    family."""
    try:
        m = parse_method(method)
    except ValueError:
        return method, False
    return m.family, m.rag


def paraphrases_of(fam: str) -> int | None:
    """N for the family 'ft-par:N', None for any other."""
    try:
        m = parse_method(fam)
    except ValueError:
        return None
    return m.paraphrases if m.ft == "full" and m.paraphrases and not m.rag and not m.replay else None


_KIND_LABEL = {"base": "Base", "rag": "RAG", "ft": "FT", "lora": "LoRA", "ft-par": "FT-par", "sft": "SFT",
               "sft-lora": "SFT-LoRA", "raft": "RAFT", "raft-lora": "RAFT-LoRA", "distill": "Distill",
               "distill-lora": "Distill-LoRA", "kmodule": "KModule"}


def _label(key: str) -> str:
    """'ft+replay+rag' → 'FT+replay+RAG' (a headline key or a family without its N)."""
    kind, *suffixes = key.split("+")
    return _KIND_LABEL.get(kind, kind) + "".join("+RAG" if s == "rag" else f"+{s}" for s in suffixes)


def family_label(fam: str) -> str:
    """'FT', 'FT-par N=5', 'SFT+replay', 'RAFT-LoRA'."""
    n = re.search(r"-par:(\d+)", fam)
    label = _label(re.sub(r"-par:\d+", "-par", fam))
    return label.replace("FT-par", f"FT-par N={n[1]}") if n else label


def method_label(method: str) -> str:
    """'Base', 'RAG', 'FT+RAG', 'FT-par N=5+RAG', 'SFT+replay', 'RAFT', …"""
    fam, rag = family(method)
    if fam == "base":
        return "RAG" if rag else "Base"
    return family_label(fam) + ("+RAG" if rag and not fam.startswith("raft") else "")


def condition_label(c: Condition) -> str:
    """A condition as a reader names it: 'RAG K=3', 'FT', 'FT-par N=5+RAG K=1', 'RAFT K=2'."""
    return method_label(c.method) + (f" K={c.k}" if family(c.method)[1] else "")


# ------------------------------------------------------------------------------------ headline columns


def _headline_keys() -> tuple[str, ...]:
    keys = ["base", "rag"]
    for kind in ("ft", "lora", "ft-par", "sft", "sft-lora", "distill", "distill-lora", "kmodule"):
        for replay in ("", "+replay"):
            keys += [kind + replay, kind + replay + "+rag"]
    keys += ["raft", "raft-lora", "raft+replay", "raft-lora+replay"]
    return tuple(keys)


# The headline columns of the paper's tables (and this tool's further arms), in order.
HEADLINES = _headline_keys()
HEADLINE_LABEL = {k: _label(k) for k in HEADLINES}
_TRAIN_RANK = {"lora": 1, "ft": 2, "sft-lora": 3, "sft": 4, "distill-lora": 4.2, "distill": 4.4, "kmodule": 4.3, "ft-par": 5,
               "raft-lora": 6, "raft": 7}


def cost_rank(key: str) -> float:
    """Headline columns from the simplest to deploy (no training: RAG) to the most expensive (a
    fine-tune that also needs retrieval), for recommending the cheapest of equals."""
    kind, *suffixes = key.split("+")
    if kind in ("base", "rag"):
        return 0 if key == "base" else 1
    rank = _TRAIN_RANK.get(kind, 9) + (0.5 if "replay" in suffixes else 0)
    return (20 if "rag" in suffixes or kind.startswith("raft") else 2) + rank


def headline_key(c: Condition) -> str | None:
    """The headline column a condition belongs to (None: a '+rag' condition at K=0, which
    duplicates its closed-book one, or a method this version does not know)."""
    fam, rag = family(c.method)
    if rag and c.k == 0:
        return None
    key = re.sub(r"-par:\d+", "-par", fam)
    if rag and not fam.startswith("raft"):
        key = "rag" if key == "base" else key + "+rag"
    return key if key in HEADLINE_LABEL else None


def headlines(conds: Sequence[Condition]) -> dict[str, Condition]:
    """The paper's columns for one task × model row: the base model, and each method at its best
    K (and best N of paraphrases); ties go to the smaller K / N (cheaper prompts, less data)."""
    best: dict[str, Condition] = {}
    for c in sorted(conds, key=lambda c: (c.k, c.paraphrases, c.method)):
        key = headline_key(c)
        if key is None or c.score is None:
            continue
        if key not in best or c.score > best[key].score:  # type: ignore[operator]
            best[key] = c
    return {k: best[k] for k in HEADLINES if k in best}


def headline_label(key: str, c: Condition) -> str:
    """'RAG (K=3)', 'FT-par (N=5)', 'FT-par+RAG (N=5, K=3)': the column with the chosen setting."""
    tag = setting_tag(key, c)
    return HEADLINE_LABEL[key] + (f" {tag}" if tag else "")


def setting_tag(key: str, c: Condition) -> str:
    """'(K=3)', '(N=5, K=3)' or '' for a headline column's chosen condition."""
    marks = []
    if key.startswith("ft-par"):
        marks.append(f"N={c.paraphrases or paraphrases_of(family(c.method)[0])}")
    if family(c.method)[1]:
        marks.append(f"K={c.k}")
    return f"({', '.join(marks)})" if marks else ""
