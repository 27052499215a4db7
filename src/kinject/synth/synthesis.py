"""Synthetic training data, made one way whichever entry point asks for it: a run's paraphrase
stage and `kinject paraphrase` call `paraphrase_chunks`, its pairs stage and `kinject questions
--pairs` call `training_pairs`, so the same chunks and settings give the same paraphrases and
pairs, byte for byte. Each opens its generator, shows its progress and closes it. What happens
to an unfinished result stays with the caller: a command writes it and says how to resume, a
stage refuses to cache it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinject.lm.generators import GeneratorOptions
from kinject.runtime.assets import Log, quiet

if TYPE_CHECKING:
    from rich.console import Console

    from kinject.core.console import BarRow
    from kinject.knowledge.corpus import Chunk
    from kinject.lm.generators import Generator
    from kinject.synth.jobs import YieldReport
    from kinject.synth.paraphrase import Paraphrase
    from kinject.synth.trainpairs import Evaluated, QAPair


@dataclass(frozen=True)
class Synthesis:
    """Who writes the data and how: the generator spec (for pairs, `cloze` too), how it is opened,
    the SQLite cache of finished work, the seed and the sampling settings. A run's config names
    only the spec and the seed; the rest is then these defaults, which commands' options match."""

    spec: str
    cache: Path
    seed: int = 0
    options: GeneratorOptions = GeneratorOptions()
    temperature: float | None = None
    """None: the recipe's own (0.7 for paraphrases and questions, 0.3 for pairs)."""
    max_attempts: int = 3

    def sampling(self) -> dict[str, Any]:
        """The recipe's keyword arguments these settings fix."""
        return {"seed": self.seed, "max_attempts": self.max_attempts,
                **({"temperature": self.temperature} if self.temperature is not None else {})}


def where(gen: Generator) -> dict[str, str]:
    """The device and dtype a local generator resolved to (an endpoint's are the server's)."""
    placement = getattr(gen, "placement", None)
    return {"device": placement.device, "dtype": placement.dtype} if placement else {"device": "remote"}


@contextmanager
def generating(how: Synthesis, console: Console, unit: str, label: str,
               log: Log = quiet) -> Iterator[tuple[Generator, BarRow]]:
    """The generator `how` names, open, and a progress row for its work; closed afterwards."""
    from kinject.core.console import BarRow, progress_bar
    from kinject.lm.generators import open_generator

    gen = open_generator(how.spec, how.options, log)
    try:
        with progress_bar(console, unit) as bar:
            yield gen, BarRow(bar, label)
    finally:
        gen.close()


def paraphrase_chunks(chunks: Sequence[Chunk], how: Synthesis, n: int, console: Console, *, per_round: int = 1,
                      log: Log = quiet) -> tuple[list[Paraphrase], YieldReport]:
    """`n` validated paraphrases per chunk (`kinject.synth.paraphrase`); the report names where a
    local generator ran."""
    from kinject.synth.paraphrase import paraphrase_corpus

    with generating(how, console, "rounds", f"paraphrasing ×{n}", log) as (gen, row):
        paraphrases, report = paraphrase_corpus(chunks, gen, n, how.cache, row.advance, per_round=per_round,
                                                total=row.total, **how.sampling())
        report.extra.update(where(gen))
    return paraphrases, report


def training_pairs(chunks: Sequence[Chunk], every: Sequence[Chunk], per_chunk: int, evaluated: Evaluated,
                   how: Synthesis, console: Console, log: Log = quiet) -> tuple[list[QAPair], dict[str, Any]]:
    """Training QA pairs for `chunks`, none an `evaluated` question: offline cloze (`how.spec` is
    `cloze`; the distractors come from `every` chunk of the knowledge base) or the fact-based
    recipe through a generator. Returns the pairs and their report."""
    from kinject.synth.trainpairs import cloze_pairs, generate_pairs

    if how.spec == "cloze":
        pairs, counts = cloze_pairs(chunks, per_chunk, how.seed, evaluated, every)
        return pairs, {"kind": "pairs", "method": "cloze", "chunks": len(chunks), "valid": len(pairs), **counts}
    with generating(how, console, "chunks", "QA pairs", log) as (gen, row):
        row.total(len(chunks))
        pairs, report = generate_pairs(chunks, gen, per_chunk, evaluated, cache_path=how.cache,
                                       progress=row.advance, **how.sampling())
        report.extra.update(where(gen))
    return pairs, report.as_dict()
