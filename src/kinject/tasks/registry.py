"""The built-in names: which task a `--task` spec means and which documents a `--source` means.

It sits on top of the data modules, which import downward only: `tasks` (items, prompts,
loaders), `corpus` (documents, cleaning, chunking, readers), `cloze` (offline questions from
chunks) and `newfacts` (the built-in new-knowledge task, made with both). They define records
and loaders; this module alone maps the names users type (`mmlu:anatomy`, `sciq:support`,
`newfacts`, `wiki-summaries`, a path) to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import Document, clean, read_wiki_summaries
from kinject.knowledge.readers import Tally, read_path
from kinject.tasks.newfacts import load_newfacts, newfacts_documents
from kinject.tasks.task import (
    MMLU_PAPER,
    Task,
    load_csv,
    load_jsonl,
    load_mmlu,
    load_sciq,
    mmlu_subjects,
)


def load_task(spec: str) -> Task:
    """A task from its name: `mmlu:<subject>|paper|all`, `sciq`, `sciq:support`, `newfacts`, or a JSONL path,
    each optionally followed by `@mc` or `@cloze`."""
    base, _, fmt_s = spec.partition("@")
    if fmt_s and fmt_s not in ("mc", "cloze", "free"):
        raise KinjectError(f"task '{spec}': unknown format '@{fmt_s}'; use @mc, @cloze or @free")
    if base.startswith("mmlu:"):
        sub = base.removeprefix("mmlu:")
        subjects = list(MMLU_PAPER) if sub == "paper" else mmlu_subjects() if sub == "all" else [sub]
        return load_mmlu(subjects, fmt_s or "mc", spec)  # type: ignore[arg-type]
    if base in ("sciq", "sciq:support"):
        if fmt_s == "mc":
            raise KinjectError(f"task '{spec}': SciQ is scored on its answer texts (lm-eval `sciq`); drop '@mc'")
        sciq = load_sciq(base == "sciq:support", spec)
        return replace(sciq, fmt="free") if fmt_s == "free" else sciq
    if base == "newfacts":
        return load_newfacts(spec, fmt_s or "cloze")  # type: ignore[arg-type]
    if base.endswith(".csv"):
        return load_csv(Path(base), fmt_s or None, spec)  # type: ignore[arg-type]
    if base.endswith(".jsonl") or Path(base).is_file():
        return load_jsonl(Path(base), fmt_s or None, spec)  # type: ignore[arg-type]
    raise KinjectError(f"unknown task '{spec}'; use mmlu:<subject> (or mmlu:paper, mmlu:all), sciq, "
                       f"sciq:support, newfacts, a .jsonl file or a .csv of free-form questions, optionally with @mc, @cloze or @free")


def read_sciq_support() -> Iterator[Document]:
    """SciQ's support passages; a passage's id is its question's id, so recall@K can be scored."""
    for item in load_sciq(False, "sciq").items:
        if item.source:
            yield Document(item.id, f"SciQ support {item.id.rsplit('/', 1)[-1]}", clean(item.source))


def read_source(source: str, topics: Sequence[str] = (), titles: Sequence[str] = (),
                keywords: Sequence[str] = (), skip_bad: bool = False, tally: Tally | None = None) -> Iterator[Document]:
    """The documents a `--source` names: a built-in set, or a file or folder of the user's own
    documents (PDF, HTML, Word, text, markdown, JSONL, MediaWiki XML; see `kinject.knowledge.readers`)."""
    if source == "wiki-summaries":
        yield from read_wiki_summaries(topics, titles, keywords)
        return
    if source == "sciq":
        yield from read_sciq_support()
        return
    if source == "newfacts":
        yield from newfacts_documents()
        return
    path = Path(source)
    if not path.exists():
        raise KinjectError(f"source '{source}' is not wiki-summaries, sciq, newfacts, or an existing file/folder")
    yield from read_path(path, skip_bad, tally)
