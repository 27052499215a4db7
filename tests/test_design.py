"""A design that fits the time the person grants: questions drawn evenly over documents, a
fine-tuning sample of the knowledge base, the smallest valid design refused with what would fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.experiment.config import FinetuneConfig
from kinject.experiment.kbinit import MIN_QUESTIONS, Survey, design, sources_of, stratified
from kinject.experiment.stages import Selection, select_chunks
from kinject.knowledge.corpus import Chunk, Repeats
from kinject.knowledge.readers import Tally
from kinject.report.build import sampled_design
from kinject.tasks.task import Item


def _chunks(n_docs: int, per_doc: int) -> list[Chunk]:
    return [Chunk(f"c{d}-{i}", f"doc{d}", f"Doc {d}", f"text {d} {i}", 200, 0, 10)
            for d in range(n_docs) for i in range(per_doc)]


def _items(chunks: list[Chunk], per_chunk: int = 2) -> list[Item]:
    kinds = ["year", "number", "name"]
    return [Item(f"q-{c.id}-{j}", "q", ("a", "b", "c", "d"), 0, subject=kinds[(i + j) % 3], source_chunks=(c.id,))
            for i, c in enumerate(chunks) for j in range(per_chunk)]


class LinearCosts:
    """Seconds that grow linearly with questions and chunks, as the FLOP model's do."""
    fixed = 60.0

    def total(self, n_questions: int, chunks: int) -> float:
        return self.fixed + 6.0 * n_questions + 3.0 * chunks


def test_stratified_draws_every_document_before_any_twice() -> None:
    chunks = _chunks(30, 4)
    ordered = stratified(_items(chunks), chunks)
    first = ordered[:30]
    assert len({it.source_chunks[0].split("-")[0] for it in first}) == 30
    assert stratified(_items(chunks), chunks) == ordered  # seeded


def test_design_fits_the_budget_and_grows_with_it() -> None:
    chunks = _chunks(40, 20)
    s = Survey(Tally(), 40, chunks, Repeats())
    ordered = stratified(_items(chunks), chunks)
    small, big = (design(s, ordered, LinearCosts(), m) for m in (15, 60))  # type: ignore[arg-type]
    for (n, c), minutes in ((small, 15), (big, 60)):
        assert MIN_QUESTIONS <= n and c >= sources_of(ordered[:n])
        assert LinearCosts().total(n, c) <= minutes * 60
    assert big[0] >= small[0] and big[1] > small[1]


def test_a_budget_below_the_smallest_design_is_refused_with_the_minimum() -> None:
    chunks = _chunks(40, 3)
    s = Survey(Tally(), 40, chunks, Repeats())
    with pytest.raises(KinjectError, match=r"--minutes 2 is too short .* give --minutes 7 or more"):
        design(s, stratified(_items(chunks), chunks), LinearCosts(), 2)  # type: ignore[arg-type]


def test_a_sample_keeps_the_sources_and_is_seeded() -> None:
    chunks = _chunks(10, 10)
    sel = Selection(("c0-0", "c5-3"), size=20, seed=1)
    picked = select_chunks(Path("kb"), sel, chunks)
    assert len(picked) == 20 and {"c0-0", "c5-3"} <= {c.id for c in picked}
    assert picked == select_chunks(Path("kb"), sel, chunks)
    assert [c.id for c in picked] == [c.id for c in chunks if c in picked]  # corpus order
    assert len(select_chunks(Path("kb"), Selection((), fraction=0.25), chunks)) == 25
    assert Selection(("a",) * 3, size=1).target(100) == 3  # never fewer than the sources
    assert select_chunks(Path("kb"), Selection(), chunks) == chunks


@pytest.mark.parametrize("body, message", [
    ({"train_on": "sample"}, "train_on: sample needs"),
    ({"train_on": "kb", "sample": {"size": 5}}, "needs train_on: sample"),
    ({"train_on": "sample", "sample": {"size": 5, "fraction": 0.5}}, "exactly one of size"),
])
def test_sample_config_errors(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**body)


def test_the_report_states_a_sampled_design(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("finetune:\n  train_on: sample\n  sample:\n    size: 240\n")
    assert "FT trained on 240 chunks" in (sampled_design(tmp_path) or "")
    assert "upper bound" in (sampled_design(tmp_path) or "")
    (tmp_path / "config.yaml").write_text("finetune:\n  train_on: kb\n")
    assert sampled_design(tmp_path) is None
