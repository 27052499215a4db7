"""Knowledge-injection method names: the one parser and the names a reader sees.

A method is written `base`, `rag`, `ft`, `ft+rag`, `ft-par:N`, `ft-par:N+rag`, `lora` or
`lora+rag`. This module owns that grammar (`parse_method`, used by the config check and the
stage graph of `kinject run`) and everything derived from a parsed name: its model family
('base' | 'ft' | 'ft-par:N' | 'lora') and whether chunks are retrieved (`family`), the labels of
the report ('FT-par N=5+RAG K=1'), and the paper's headline columns with the condition chosen for
each (`headlines`: best K, best N) and their order by deployment cost (`COST_RANK`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kinject.results import Condition

_METHOD = re.compile(r"^(?:(?P<plain>base|rag)|(?P<ft>ft|lora)(?:-par:(?P<n>\d+))?(?P<rag>\+rag)?)$")


@dataclass(frozen=True)
class Method:
    """A knowledge-injection method: which model variant, and whether chunks are retrieved."""

    name: str
    ft: Literal["full", "lora"] | None
    paraphrases: int
    rag: bool

    @property
    def family(self) -> str:
        """The model variant: 'base', 'ft', 'ft-par:N' or 'lora'."""
        if self.ft is None:
            return "base"
        if self.ft == "lora":
            return "lora"
        return f"ft-par:{self.paraphrases}" if self.paraphrases else "ft"


def parse_method(name: str) -> Method:
    m = _METHOD.match(name.strip())
    if not m:
        raise ValueError(f"unknown method '{name}'; use base, rag, ft, ft+rag, ft-par:N, ft-par:N+rag, "
                         f"lora, lora+rag")
    if m["plain"]:
        return Method(name, None, 0, m["plain"] == "rag")
    if m["ft"] == "lora" and m["n"] is not None:  # the report's paraphrase columns and plot are FT-par's
        raise ValueError(f"method '{name}': paraphrase training is full fine-tuning only; use ft-par:{m['n']}")
    n = int(m["n"] or 0)
    if m["n"] is not None and n < 1:
        raise ValueError(f"method '{name}': the paraphrase count must be at least 1")
    return Method(name, "full" if m["ft"] == "ft" else "lora", n, bool(m["rag"]))


# ------------------------------------------------------------------------------------ names


def family(method: str) -> tuple[str, bool]:
    """('base' | 'ft' | 'ft-par:N' | 'lora', whether retrieved chunks are in the prompt). A name
    this version does not know (a store written by another one) is its own closed-book family."""
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
    return m.paraphrases if m.ft == "full" and m.paraphrases and not m.rag else None


_FAMILY_LABEL = {"base": "Base", "ft": "FT", "lora": "LoRA"}


def family_label(fam: str) -> str:
    n = paraphrases_of(fam)
    return f"FT-par N={n}" if n is not None else _FAMILY_LABEL.get(fam, fam)


def method_label(method: str) -> str:
    """'Base', 'RAG', 'FT+RAG', 'FT-par N=5+RAG', …"""
    fam, rag = family(method)
    if fam == "base":
        return "RAG" if rag else "Base"
    return family_label(fam) + ("+RAG" if rag else "")


def condition_label(c: Condition) -> str:
    """A condition as a reader names it: 'RAG K=3', 'FT', 'FT-par N=5+RAG K=1'."""
    return method_label(c.method) + (f" K={c.k}" if family(c.method)[1] else "")


# ------------------------------------------------------------------------------------ headline columns

# The headline columns of the paper's tables, in order; the cost rank orders methods from the
# simplest to deploy (no training) to the most expensive, for recommending the cheapest of equals.
HEADLINES = ("base", "rag", "ft", "ft+rag", "lora", "lora+rag", "ft-par", "ft-par+rag")
COST_RANK = {"rag": 1, "lora": 2, "ft": 3, "ft-par": 4, "lora+rag": 5, "ft+rag": 6, "ft-par+rag": 7}
HEADLINE_LABEL = {"base": "Base", "rag": "RAG", "ft": "FT", "ft+rag": "FT+RAG", "lora": "LoRA",
                  "lora+rag": "LoRA+RAG", "ft-par": "FT-par", "ft-par+rag": "FT-par+RAG"}


def _headline_of(c: Condition) -> str | None:
    fam, rag = family(c.method)
    key = "ft-par" if paraphrases_of(fam) is not None else fam
    if key not in ("base", "ft", "lora", "ft-par") or (rag and c.k == 0):
        return None  # a '+rag' condition at K=0 duplicates its closed-book one; the tables skip it
    if not rag:
        return key
    return "rag" if key == "base" else key + "+rag"


def headlines(conds: Sequence[Condition]) -> dict[str, Condition]:
    """The paper's columns for one task × model row: the base model, and each method at its best
    K (and best N of paraphrases); ties go to the smaller K / N (cheaper prompts, less data)."""
    best: dict[str, Condition] = {}
    for c in sorted(conds, key=lambda c: (c.k, c.paraphrases, c.method)):
        key = _headline_of(c)
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
        marks.append(f"N={paraphrases_of(family(c.method)[0])}")
    if key.endswith("rag"):
        marks.append(f"K={c.k}")
    return f"({', '.join(marks)})" if marks else ""
