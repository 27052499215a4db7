"""Knowledge bases: read documents from many sources, clean them, cut them into token-bounded chunks.

Chunks are cut with the *target* tokenizer (the LM that will be fine-tuned or prompted), at
sentence boundaries where possible, and carry a content-hash id plus provenance (document,
title, character offsets, access groups), stored as Parquet.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kinject import __version__
from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_dir, check_replaceable, iter_jsonl, writing

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SmallPolicy = Literal["merge", "drop", "keep"]
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


@dataclass(frozen=True)
class Mark:
    """Where the text from character `start` on comes from: a page (PDF, 1-based; 0 = no pages)
    and a heading path ("Installation › Requirements"), so a chunk can be cited precisely."""
    start: int
    page: int = 0
    section: str = ""


@dataclass(frozen=True)
class Document:
    """One source document before chunking, with the groups that may read it."""
    id: str
    title: str
    text: str
    groups: tuple[str, ...] = ()
    source: str = ""
    """The file it was read from, relative to the folder given (empty for built-in sources)."""
    marks: tuple[Mark, ...] = ()
    """Page and heading marks in order of `start`."""


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document: its text, token count, place in the document and pages."""
    id: str
    """sha256 of the document id and the chunk text: stable across rebuilds, changes with content."""
    doc_id: str
    title: str
    text: str
    n_tokens: int
    start: int
    end: int
    groups: tuple[str, ...] = ()
    source: str = ""
    page_start: int = 0
    page_end: int = 0
    section: str = ""
    marks: tuple[Mark, ...] = ()
    """The document's marks that bear on this chunk, `start` relative to the chunk's text, so a
    sentence of it can be cited by its own page and heading."""


SECTION_SEP = " › "


def citation(chunk: Chunk, span: tuple[int, int] | None = None) -> str:
    """Where to look: "manual.pdf p. 12 · Installation › Requirements" (or the title where the
    chunk has no file); with `span`, characters [a, b) of the chunk's text: that passage's own
    page and heading where the chunk records its marks."""
    p0, p1, section = chunk.page_start, chunk.page_end, chunk.section
    if span is not None and chunk.marks:
        p0, p1, section = provenance(chunk.marks, *span)
    parts = [chunk.source or chunk.title or chunk.doc_id]
    if p0:
        parts[0] += f" p. {p0}" if p1 <= p0 else f" pp. {p0}–{p1}"
    if section:
        parts.append(section)
    elif chunk.source.endswith(".jsonl") and chunk.title:  # one file of many records: which record
        parts.append(chunk.title)
    return " · ".join(parts)


def local_marks(marks: Sequence[Mark], a: int, b: int) -> tuple[Mark, ...]:
    """The marks that bear on the span [a, b) (the one in force at `a`, as of 0, and those
    inside), relative to `a`."""
    covering = [replace(m, start=0) for m in marks if m.start <= a][-1:]
    return tuple(covering + [replace(m, start=m.start - a) for m in marks if a < m.start < b])


def provenance(marks: Sequence[Mark], a: int, b: int) -> tuple[int, int, str]:
    """(first page, last page, heading path) of the text span [a, b) under `marks`; the heading
    is the one in force where the span starts (else the first one inside it)."""
    covering = [m for m in marks if m.start <= a][-1:]
    inside = [m for m in marks if a < m.start < b]
    spans = covering + inside
    if not spans:
        return 0, 0, ""
    section = next((m.section for m in spans if m.section), "")
    pages = [m.page for m in spans if m.page]
    return (min(pages), max(pages), section) if pages else (0, 0, section)


# ---------------------------------------------------------------------------- cleaning (pure)

_WS = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\n+")


def clean(text: str) -> str:
    """Normalise whitespace, keep paragraph breaks."""
    lines = [_WS.sub(" ", ln).strip() for ln in text.replace("\r\n", "\n").split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def clean_wikitext(wikitext: str) -> str:
    """Wikitext → plain text, as wikiextractor does: no templates, refs, tables, files, markup."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for node in code.filter_tags(recursive=False):
        if str(node.tag).lower() in ("ref", "table", "gallery", "math", "timeline"):
            try:
                code.remove(node)
            except ValueError:
                pass
    for link in code.filter_wikilinks():
        if str(link.title).lower().startswith(("file:", "image:", "category:")):
            try:
                code.remove(link)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)  # stray table markup
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)  # headings → their text
    return clean(text)


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (whitespace between excluded)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def chunk_id(doc_id: str, text: str) -> str:
    """A chunk's id: the first 16 hex digits of sha256(document id, text)."""
    return hashlib.sha256(f"{doc_id}\x00{text}".encode()).hexdigest()[:16]


def chunk_document(doc: Document, tok: "PreTrainedTokenizerBase", max_tokens: int = 256, min_tokens: int = 32,
                   small: SmallPolicy = "merge") -> list[Chunk]:
    """Greedy sentence packing up to `max_tokens`; a sentence longer than that is cut by tokens.

    Chunks under `min_tokens`: `merge` joins them to the previous chunk of the document when
    the result still fits (else keeps them), `drop` removes them, `keep` keeps them.
    """
    text = doc.text

    def count(a: int, b: int) -> int:
        return len(tok(text[a:b], add_special_tokens=False)["input_ids"])

    pieces: list[tuple[int, int]] = []
    for a, b in sentences(text):
        if count(a, b) <= max_tokens:
            pieces.append((a, b))
            continue
        enc = tok(text[a:b], add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        for i in range(0, len(offsets), max_tokens):
            part = offsets[i:i + max_tokens]
            pieces.append((a + part[0][0], a + part[-1][1]))
    spans: list[list[int]] = []
    for a, b in pieces:
        if spans and count(spans[-1][0], b) <= max_tokens:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    chunks: list[Chunk] = []
    for a, b in spans:
        n = count(a, b)
        if n < min_tokens and small != "keep":
            if small == "drop":
                continue
            if chunks and count(chunks[-1].start, b) <= max_tokens:
                prev = chunks.pop()
                a, n = prev.start, count(prev.start, b)
        body = text[a:b]
        p0, p1, section = provenance(doc.marks, a, b)
        chunks.append(Chunk(chunk_id(doc.id, body), doc.id, doc.title, body, n, a, b, doc.groups,
                            doc.source, p0, p1, section, local_marks(doc.marks, a, b)))
    return chunks


# ---------------------------------------------------------------------------- readers (I/O)


def read_jsonl(path: Path) -> Iterator[Document]:
    """Lines of {"id", "title", "text", optional "groups": [...]}."""
    for where, n, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise KinjectError(f"{where}: expected an object with a string field 'text' (and 'id', 'title')")
        groups = row.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise KinjectError(f"{where}: field 'groups' must be a list of strings")
        yield Document(str(row.get("id", f"{path.stem}/{n}")), str(row.get("title", "")), clean(row["text"]),
                       tuple(groups))


def read_mediawiki(path: Path) -> Iterator[Document]:
    """Pages of a MediaWiki XML export (main namespace, redirects skipped), cleaned."""
    import xml.etree.ElementTree as ET

    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if not elem.tag.endswith("}page") and elem.tag != "page":
                continue
            ns = "".join(t.text or "" for t in elem.iter() if t.tag.endswith("ns"))
            title = next((t.text or "" for t in elem.iter() if t.tag.endswith("title")), "")
            page_id = next((t.text or "" for t in elem.iter() if t.tag.endswith("id")), title)
            text = next((t.text or "" for t in elem.iter() if t.tag.endswith("text")), "")
            redirect = any(t.tag.endswith("redirect") for t in elem.iter())
            elem.clear()
            if ns not in ("", "0") or redirect or not text.strip():
                continue
            body = clean_wikitext(text)
            if body:
                yield Document(f"wiki/{page_id}", title, body)
    except ET.ParseError as exc:
        raise KinjectError(f"{path}: unreadable MediaWiki XML dump ({exc})") from exc


def read_wiki_summaries(topics: Sequence[str] = (), titles: Sequence[str] = (),
                        keywords: Sequence[str] = ()) -> Iterator[Document]:
    """The built-in Wikipedia lead summaries, filtered by topic, exact titles or keywords."""
    from kinject.runtime.assets import get_asset, pull

    data = json.loads((pull(get_asset("wiki-summaries", "dataset")) / "summaries_en-us.json").read_text())
    known_topics = sorted({v.get("topic", "") for v in data.values()})
    for t in topics:
        if t not in known_topics:
            raise KinjectError(f"unknown wiki-summaries topic '{t}'; known: {', '.join(known_topics)}")
    title_set = {t.lower() for t in titles}
    words = [k.lower() for k in keywords]
    for title in sorted(data):
        v = data[title]
        text = clean(v.get("extract", ""))
        if not text:
            continue
        if topics and v.get("topic") not in topics:
            continue
        if title_set and title.lower() not in title_set:
            continue
        if words and not any(w in text.lower() or w in title.lower() for w in words):
            continue
        yield Document(f"wiki-summaries/{title}", title, text)


# ---------------------------------------------------------------------------- corpus folders

CORPUS_FILES = ("chunks.parquet", "meta.json")
"""What a corpus folder holds (`kinject corpus build --out`)."""


_WORD = re.compile(r"\w+")
SHINGLE = 5
"""Words per shingle: long enough that two texts share one only where they share a passage."""
REPEAT = 0.8
"""A chunk whose shingles are at least this share already in the corpus repeats it."""
_COMPILATION = {"print", "single", "singlepage", "onepage", "all", "singlehtml"}
"""File stems (and folder names) of pages that gather a whole site: the copy to drop."""


def _shingles(text: str) -> set[int]:
    """Stable 64-bit hashes of the text's word 5-grams (lowercased), one in four kept once a text
    has 40 or more, so a large corpus costs a quarter of the memory with the same containment
    estimate (the kept quarter is the same for every text: it is chosen by hash)."""
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}
    hashes = {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams if g}
    sampled = {h for h in hashes if h % 4 == 0}
    return sampled if len(hashes) >= 40 and sampled else hashes


def _provenance_rank(doc: Document) -> tuple[bool, int, str]:
    """Which copy of repeated text to keep: a page of its own before a page that gathers the
    whole site (print.html), a shorter document before a longer one that contains it, then by name."""
    parts = Path(doc.source).parts
    compilation = Path(doc.source).stem.lower() in _COMPILATION or any(p.lower() in _COMPILATION for p in parts[:-1])
    return compilation, len(doc.text), doc.source or doc.id


@dataclass
class Repeats:
    """What near-duplicate detection left out: per document, its chunks skipped and the
    documents they repeat."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """document (file, else id) → the files its skipped chunks repeat, one entry per chunk"""
    totals: dict[str, int] = field(default_factory=dict)
    """document → its chunks before detection"""

    @property
    def chunks(self) -> int:
        """How many chunks were skipped in all."""
        return sum(len(v) for v in self.skipped.values())

    def notes(self, most: int = 5) -> list[str]:
        """A total, then one line per document that repeats others (whole documents first, the
        `most` largest)."""
        if not self.skipped:
            return []
        lines = [f"near-duplicates: {self.chunks} chunks skipped, they repeat text kept from other files"]
        for doc, owners in sorted(self.skipped.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            others = sorted(set(owners))
            what = (f"{len(others)} other files" if len(others) > 1 else others[0])
            whole = len(owners) == self.totals.get(doc, -1)
            lines.append(f"  {doc} {'repeats' if whole else 'partly repeats'} {what}: {len(owners)} "
                         f"of {self.totals.get(doc, len(owners))} chunks skipped")
        more = len(lines) - 1 - most
        return lines[:most + 1] + ([f"  … and {more} more documents"] if more > 0 else [])


def drop_repeats(chunks: Sequence[Chunk], docs: Sequence[Document], repeats: Repeats | None = None) -> list[Chunk]:
    """The chunks without those that repeat text kept elsewhere (a site's print.html, a page saved
    twice, a copy in two folders), in their original order.

    Documents are visited best provenance first (`_provenance_rank`); a chunk is dropped when at
    least `REPEAT` of its word 5-grams are already in the kept corpus. Containment, not
    similarity: a print page's chunk straddles two pages' chunks and matches neither alone.
    Deterministic, so a rebuild keeps the same chunks."""
    repeats = repeats if repeats is not None else Repeats()
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    owner: dict[int, str] = {}
    dropped: set[str] = set()
    for doc in sorted(docs, key=_provenance_rank):
        name = doc.source or doc.id
        for c in by_doc.get(doc.id, []):
            grams = _shingles(c.text)
            seen = [owner[g] for g in grams if owner.get(g, name) != name]  # repeats within a file stay
            if grams and len(seen) >= REPEAT * len(grams):
                dropped.add(c.id)
                repeats.skipped.setdefault(name, []).append(max(set(seen), key=seen.count))
                continue
            for g in grams:
                owner.setdefault(g, name)
        repeats.totals[name] = len(by_doc.get(doc.id, []))
    repeats.skipped = {k: v for k, v in repeats.skipped.items() if v}
    return [c for c in chunks if c.id not in dropped]


def chunk_documents(docs: Iterable[Document], tok: "PreTrainedTokenizerBase", max_tokens: int = 256,
                    min_tokens: int = 32, small: SmallPolicy = "merge", repeats: Repeats | None = None) -> list[Chunk]:
    """Every document's chunks in order; a chunk whose id repeats (identical text in one
    document) is kept once, and chunks of the user's files that repeat other files' text are
    dropped (`drop_repeats`, counted in `repeats`). Records of datasets (built-in, JSONL, MediaWiki
    dumps) are kept as they are: questions may name them by id."""
    chunks: list[Chunk] = []
    seen: set[str] = set()
    files: list[Document] = []
    for doc in docs:
        if doc.source and doc.id == f"file/{doc.source}":  # a whole file, not a record of a dataset
            files.append(doc)
        for c in chunk_document(doc, tok, max_tokens, min_tokens, small):
            if c.id not in seen:
                seen.add(c.id)
                chunks.append(c)
    if len(files) > 1:
        from_files = {d.id for d in files}
        kept = {c.id for c in drop_repeats([c for c in chunks if c.doc_id in from_files], files, repeats)}
        chunks = [c for c in chunks if c.doc_id not in from_files or c.id in kept]
    return chunks


def build_corpus(docs: Iterable[Document], tok: "PreTrainedTokenizerBase", out: Path, *, max_tokens: int = 256,
                 min_tokens: int = 32, small: SmallPolicy = "merge", tokenizer_ref: str = "",
                 context_limit: int | None = None, progress=lambda n: None,
                 repeats: Repeats | None = None) -> list[Chunk]:
    """Chunk documents and write `out/chunks.parquet` + `meta.json` atomically; chunks that
    repeat other files are left out and counted in `repeats`."""
    check_replaceable(out, "corpus", CORPUS_FILES)
    if max_tokens < 16:
        raise KinjectError(f"--chunk-tokens {max_tokens} is too small; use at least 16")
    if context_limit is not None and max_tokens > context_limit:
        raise KinjectError(f"--chunk-tokens {max_tokens} is beyond the model context ({context_limit} tokens)")
    counted = [0]

    def each(doc: Document) -> Document:
        counted[0] += 1
        progress(1)
        return doc

    repeats = repeats if repeats is not None else Repeats()
    chunks = chunk_documents((each(d) for d in docs), tok, max_tokens, min_tokens, small, repeats)
    n_docs = counted[0]
    if not chunks:
        raise KinjectError(f"the corpus is empty: {n_docs} documents gave no chunk; check the source and filters")
    meta = {"documents": n_docs, "chunks": len(chunks), "max_tokens": max_tokens, "min_tokens": min_tokens,
            "small": small, "tokenizer": tokenizer_ref, "kinject_version": __version__,
            "repeated_chunks_skipped": repeats.chunks,
            "digest": hashlib.sha256("".join(c.id for c in chunks).encode()).hexdigest()}
    with writing(out):  # a full disk: one line, and the previous corpus stays
        atomic_dir(out, lambda tmp: (write_chunks(tmp / "chunks.parquet", chunks),
                                     (tmp / "meta.json").write_text(json.dumps(meta, indent=2))))
    return chunks


def previous_chunk_ids(folder: Path) -> set[str] | None:
    """The chunk ids of the corpus or index an earlier build left in `folder` (None if none), so a
    rebuild can say what changed."""
    import pyarrow.parquet as pq

    try:
        return set(pq.read_table(folder / "chunks.parquet", columns=["id"]).column("id").to_pylist())
    except Exception:  # noqa: BLE001 - no (readable) earlier build: nothing to compare with
        return None


def write_chunks(path: Path, chunks: Sequence[Chunk]) -> None:
    """Write chunks to a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [asdict(c) for c in chunks]
    for r in rows:
        r["groups"] = list(r["groups"])
    pq.write_table(pa.Table.from_pylist(rows), path)


def read_chunks(folder: Path) -> list[Chunk]:
    """A corpus folder's chunks (a one-line error when it is not one or is damaged)."""
    import pyarrow.parquet as pq

    path = folder / "chunks.parquet"
    if not (folder / "meta.json").is_file() or not path.is_file():
        raise KinjectError(f"{folder} is not a corpus folder (no chunks.parquet + meta.json); "
                           f"build one with `kinject corpus build`")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any Arrow error means a damaged file
        raise KinjectError(f"{path}: unreadable Parquet ({exc}); rebuild the corpus") from exc
    return [Chunk(**{**r, "groups": tuple(r["groups"] or ()),  # corpora built before marks have none
                     "marks": tuple(Mark(**m) for m in r.get("marks") or ())}) for r in rows]
