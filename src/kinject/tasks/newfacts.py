"""The built-in `newfacts` knowledge base and task: post-cutoff text, cloze questions, no LLM.

The paper measures *new* knowledge on questions about events after the models' training
cutoff (their current-events task). Our analogue ships inside pinned packages:

* the Wikipedia lead summaries (2026 snapshot) that state something about 2025 or 2026 —
  questions are only cut from those sentences, the rest of the summary is context;
* tzdata's NEWS for the time-zone releases of 2025–26 (one document per release section);
* Django's 6.0 and 6.1 release notes (2025–26), one document per section, RST reduced to text.

Chunks are cut with a fixed tokenizer (`NEWFACTS_TOKENIZER`, 256 tokens, the corpus defaults)
whatever model is evaluated, so chunk ids, and with them the questions, are the same on every
machine; `kinject corpus build --source newfacts` with its default options gives the same
chunks, which is what makes recall@K work.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_write_text
from kinject.knowledge.corpus import Chunk, Document, chunk_documents, clean
from kinject.knowledge.spans import Span
from kinject.runtime.catalog import DEFAULT_LM
from kinject.tasks.cloze import cloze_for_chunk, corpus_pool, place_options
from kinject.tasks.task import Format, Item, Task

NEWFACTS_TOKENIZER = DEFAULT_LM
CHUNK_TOKENS, MIN_TOKENS = 256, 32
SEED = 0
DEV_ITEMS = 5
POST_CUTOFF = re.compile(r"\b202[56]\b")
_ANY_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b")


# ---------------------------------------------------------------------------- Wikipedia summaries


def wiki_documents(data: dict[str, dict]) -> Iterator[Document]:
    """Summaries mentioning 2025 or 2026, whole (their other sentences give the subject)."""
    for title in sorted(data):
        text = clean(data[title].get("extract", ""))
        if text and POST_CUTOFF.search(text):
            yield Document(f"newfacts/wiki/{title}", title, text)


# ---------------------------------------------------------------------------- tzdata NEWS.md

_TZ_VERSION = re.compile(r"^# Version (\S+)\s*\nUpstream version (\S+) released (\d{4})-(\d{2})-(\d{2})", re.M)


def tzdata_documents(news: str) -> Iterator[Document]:
    """One document per section of each 2025–26 release (the "Briefly" summaries repeat them)."""
    for block in re.split(r"\n-{3,}\n", news):
        m = _TZ_VERSION.search(block)
        if not m or m[3] not in ("2025", "2026"):
            continue
        version, upstream, date = m[1], m[2], f"{m[3]}-{m[4]}-{m[5]}"
        for section in re.split(r"^## ", block[m.end():], flags=re.M)[1:]:
            heading, _, body = section.partition("\n")
            heading = heading.strip().rstrip(":")
            if heading.lower().startswith("briefly"):
                continue
            paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
            if not paragraphs:
                continue
            slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
            head = f"tz {upstream} ({date}): {heading}."
            yield Document(f"newfacts/tzdata/{version}/{slug}", f"tz {upstream}: {heading}",
                           clean("\n\n".join([head, *paragraphs])))


# ---------------------------------------------------------------------------- Django release notes (RST)

_ROLE = re.compile(r":(\w+)(?::\w+)?:`([^`]+)`")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def _role(m: re.Match[str]) -> str:
    role, body = m[1], m[2]
    target = re.search(r"^(.*?)\s*<([^>]+)>$", body, re.S)
    if target and target[1].strip():
        return target[1].strip()
    body = (target[2] if target else body).lstrip("!")
    if body.startswith("~"):
        body = body[1:].rsplit(".", 1)[-1]
    body = body.lstrip(".")
    if role in ("meth", "func") and not body.endswith(")"):
        body += "()"
    return body


def rst_inline(text: str) -> str:
    """Sphinx inline markup → the text a reader sees."""
    text = _ROLE.sub(_role, text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`__?", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)
    return text.replace("\\", "")


def rst_sections(rst: str) -> list[tuple[list[str], list[str]]]:
    """(heading path, prose paragraphs) per section; code, literal blocks and directives dropped."""
    lines = rst.splitlines()
    levels: list[str] = []
    path: list[str] = []
    out: list[tuple[list[str], list[str]]] = [([], [])]
    para: list[str] = []
    skip_indent = False

    def flush() -> bool:
        if para:
            text = " ".join(" ".join(para).split())
            literal = text.endswith("::")
            text = re.sub(r"\s*::$", ":", text)
            if text.strip(":"):
                out[-1][1].append(rst_inline(text))
            para.clear()
            return literal
        return False

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if skip_indent:
            if line.strip() and not line.startswith((" ", "\t")):
                skip_indent = False
            else:
                i += 1
                continue
        if _UNDERLINE.match(line) and i + 2 < len(lines) and _UNDERLINE.match(lines[i + 2]):
            i += 3  # over- and underlined title
            continue
        if line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()):
            flush()
            mark = nxt.strip()[0]
            if mark not in levels:
                levels.append(mark)
            depth = levels.index(mark)
            path = path[:depth] + [rst_inline(line.strip())]
            out.append((list(path), []))
            i += 2
            continue
        if line.startswith(".. "):
            flush()
            directive = re.match(r"\.\. ([\w-]+)::", line)
            keep_body = directive is not None and directive[1] in ("note", "warning", "admonition", "versionadded",
                                                                    "versionchanged", "deprecated", "attention")
            skip_indent = not keep_body
            i += 1
            continue
        if not line.strip():
            if flush():
                skip_indent = True
            i += 1
            continue
        if re.match(r"^\s*(?:[*\-+]|\d+\.|#\.)\s+", line) and para and flush():
            skip_indent = True
        stripped = re.sub(r"^\s*(?:[*\-+]|\d+\.|#\.)\s+", "", line) if not para else line
        para.append(stripped.strip())
        i += 1
    flush()
    return [(p, paras) for p, paras in out if paras]


def django_documents(rst: str, version: str) -> Iterator[Document]:
    """One document per section of a Django release-notes file, headed with the version and date."""
    date = re.search(r"^\*(\w+ \d{1,2}, \d{4})\*\s*$", rst, re.M)
    for path, paragraphs in rst_sections(rst):
        body = [p for p in paragraphs if not re.fullmatch(r"\*?\w+ \d{1,2}, \d{4}\*?", p)]
        if not body or not path:
            continue
        name = " / ".join(path)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        when = f" (released {date[1]})" if date else ""
        head = f"Django {version} release notes{when}: {path[-1]}."
        yield Document(f"newfacts/django/{version}/{slug}", f"Django {version}: {path[-1]}",
                       clean("\n\n".join([head, *body])))


# ---------------------------------------------------------------------------- the knowledge base and task


def newfacts_documents() -> Iterator[Document]:
    """All newfacts documents, in a fixed order (pulls the three assets on first use)."""
    from kinject.runtime.assets import get_asset, pull

    data = json.loads((pull(get_asset("wiki-summaries", "dataset")) / "summaries_en-us.json").read_text())
    yield from wiki_documents(data)
    yield from tzdata_documents((pull(get_asset("tzdata-news", "dataset")) / "NEWS.md").read_text(encoding="utf-8"))
    releases = pull(get_asset("django-releases", "dataset"))
    for version in ("6.0", "6.1"):
        yield from django_documents((releases / f"{version}.txt").read_text(encoding="utf-8"), version)


def newfacts_chunks() -> list[Chunk]:
    """The KB's chunks, cut exactly as `kinject corpus build --source newfacts` cuts them by default."""
    from kinject.runtime.models import load_tokenizer

    tok, _ = load_tokenizer(NEWFACTS_TOKENIZER)
    return chunk_documents(newfacts_documents(), tok, CHUNK_TOKENS, MIN_TOKENS, "merge")


_HEADING = re.compile(r"^(?:tz \S+ \(\d{4}-\d\d-\d\d\): |Django \d+\.\d+ release notes)")


def states_new_fact(chunk: Chunk, sentence: str, span: Span) -> bool:
    """May this span be blanked? tzdata and Django text is post-cutoff throughout (except the
    heading line each document starts with). A Wikipedia summary mixes old and new facts: the
    span must be the 2025–26 statement itself — the year, or a number, date or name next to it
    with no other year in between — and not a place (that a city lies in Germany is old news)."""
    if not chunk.doc_id.startswith("newfacts/wiki/"):
        return not _HEADING.match(sentence)
    if span.kind == "year":
        return POST_CUTOFF.fullmatch(span.text) is not None
    if span.kind in ("place", "zone"):
        return False
    for m in POST_CUTOFF.finditer(sentence):
        if m.end() <= span.start:
            gap = sentence[m.end():span.start]
        elif span.end <= m.start():
            gap = sentence[span.end:m.start()]
        else:
            gap = ""  # the year is part of the span ("July 2025")
        if len(gap) <= 60 and not _ANY_YEAR.search(gap):
            return True
    return False


def newfacts_items(chunks: list[Chunk]) -> list[Item]:
    """One cloze question per chunk where one can be made (deterministic: fixed seed, fixed chunks).

    Distractors come from the chunk's own source (Wikipedia, tzdata or Django), so a setting
    name never competes with a city and a time-zone date never with a census date."""
    families: dict[str, list[Chunk]] = {}
    for c in chunks:
        families.setdefault(c.doc_id.split("/")[1], []).append(c)
    pools = {name: corpus_pool(group) for name, group in families.items()}
    clozes = [q for c in chunks
              for q in cloze_for_chunk(c, pools[c.doc_id.split("/")[1]], 1, SEED, states_new_fact)]
    return place_options(clozes, SEED, "newfacts")


def _items_cache() -> Path:
    """Where the built items are kept: building them loads a tokenizer, chunks 250 documents and
    searches every sentence (about 10 s), and a cached `kinject run` must take seconds. The key
    is the code that builds them and the pinned assets they come from."""
    from kinject.knowledge import corpus, furniture, spans
    from kinject.runtime.assets import get_asset, kinject_home
    from kinject.tasks import cloze

    h = hashlib.sha256()
    for module in (cloze, corpus, furniture, spans):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    for name in ("wiki-summaries", "tzdata-news", "django-releases", NEWFACTS_TOKENIZER):
        h.update(repr(get_asset(name)).encode())
    return kinject_home() / "cache" / "newfacts" / f"{h.hexdigest()[:24]}.json"


def cached_newfacts_items() -> list[Item]:
    """The new-facts questions, from the cache when readable, else rebuilt and cached."""
    path = _items_cache()
    try:
        rows = json.loads(path.read_text())
        return [Item(**{**r, **{k: tuple(r.get(k, ())) for k in ("choices", "source_chunks", "aliases")}})
                for r in rows]  # JSON gives lists: the items must equal freshly built ones
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent or unreadable: rebuild
    items = newfacts_items(newfacts_chunks())
    try:  # a cache that cannot be written only costs time
        atomic_write_text(path, json.dumps([asdict(it) for it in items]))
    except OSError:
        pass
    return items


def load_newfacts(name: str, fmt: Format = "cloze") -> Task:
    """The `newfacts` task; a few items (chosen by id hash) are the dev pool for few-shot prompts."""
    items = cached_newfacts_items()
    if not items:
        raise KinjectError("newfacts: no question could be made; run `kinject assets pull wiki-summaries "
                           "tzdata-news django-releases --force`")
    rank = sorted(items, key=lambda it: hashlib.sha256(it.id.encode()).hexdigest())
    dev_ids = {it.id for it in rank[:DEV_ITEMS]}
    test = tuple(it for it in items if it.id not in dev_ids)
    dev = tuple(it for it in items if it.id in dev_ids)
    return Task(name, test, dev, fmt, "plain")
