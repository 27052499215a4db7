"""`kinject ask`: a grounded answer from retrieved chunks, with its citations, or an abstention.

A small model answers whatever it is asked, so whether the chunks hold an answer is decided
around it, by four checks, each calibrated or exact:

1. the best chunk scores under the embedder's chunk threshold: the question is off-topic;
2. the question names a code (E42, SK-4481), a version or a year (3.14, 2024) that no retrieved
   chunk mentions;
3. no sentence of the chunks scores the embedder's sentence threshold against the question: the
   documents are about the subject but do not state this fact (the model would otherwise copy
   a neighbouring sentence — "What is the price of the pump?" → "The pump weighs 14 kilograms");
4. the answer states a number that neither the chunks nor the question contain.

Checks 1-3 run before the LM is loaded; check 4 after it answers. The model reads the best
sentences of the chunks, each with its neighbours under its own heading path (`sentence_sources`),
not the whole chunks: a small model takes a changelog fact's version from the heading right above
it, and not from a neighbouring section's. An answer that restates a
sentence much further from the question than the best one is replaced by that best sentence,
quoted, unless the answer names something exact of the chunks that the quote lacks
(`more_specific`). Citations name the page and heading of the sentence an answer rests on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import SECTION_SEP, Chunk, citation, provenance, sentences
from kinject.rag.retrieval import BM25Retriever, Embedder, Hit, HybridRetriever, Retriever, contextual, header, stemmer
from kinject.rag.stated import CITE, stated_numbers, unknown_codes, unknown_versions, unsupported_numbers

if TYPE_CHECKING:
    from kinject.lm.backends import HFBackend

ABSTAIN = "Not in the knowledge base."


@dataclass(frozen=True)
class Thresholds:
    """The weakest best scores `ask` answers from (cosine similarity of normalised vectors)."""

    chunk: float
    """Best chunk against the question: under it, the question is off-topic."""
    sentence: float
    """Best sentence of the chunks that clear `chunk`: under it, no sentence states the answer."""


CALIBRATED = {"minilm-l6": Thresholds(0.35, 0.60), "mpnet-base": Thresholds(0.40, 0.55)}
"""Per catalog embedder (minilm-l6 / mpnet-base).

Chunk: answerable questions (400 SciQ questions against SciQ's support passages where the top
hit is the source: min 0.54 / 0.55; the fixture folder's 25 facts: min 0.46 / 0.52) against
off-topic ones (max 0.32 / 0.37); both keep 100% of the answerable, refuse 100% of the off-topic.

Sentence: the highest 0.05 step that keeps every answerable fixture question and at least 98% of
the SciQ validation questions whose own support passage is the top hit among all 887 (706 / 708
questions; kept: 98.3% / 99.9%). With each question's own passage left out of the index (the documents are on the subject, the fact is
missing) it refuses 54% / 28% of them, a lower bound since other SciQ passages often state the
fact. With qwen2.5-0.5b answering (benchmarks/ask_quality.py), the fixture folder's 12 questions
whose fact is missing are refused 8 / 8 times (the sentence check 6 / 4, the others by code or
number), all 25 answerable ones are answered with their fact (quoting included) and all 12
off-topic ones refused."""
DEFAULT = Thresholds(0.35, 0.60)
"""For other dense embedders."""

ASK_SYSTEM = ("You answer questions using only the numbered sources. Answer with one short sentence that states "
              "the fact, and cite the source you used like [1].")
"""No "say you don't know" rule: a 0.5B model then abstains on everything. Abstention is the
checks' job."""
ASK_TEMPLATE = "Sources:\n\n{sources}\n\nQuestion: {question}"
_PUMP = ("[1] Pump manual › Changes › Version 2.1\nThe pump now starts itself after a power cut.\n\n"
         "[2] Pump manual › Specifications\nThe pump weighs 14 kilograms and runs on 230 V.")
ASK_EXAMPLES = (
    (ASK_TEMPLATE.format(sources=_PUMP, question="Since which version does the pump restart on its own after a "
                                                 "power failure?"),
     "Since version 2.1, the pump starts itself after a power cut [1]."),
    (ASK_TEMPLATE.format(sources=_PUMP, question="What is the price of the pump?"), ABSTAIN),
)
"""Two worked turns before the question, one answered and one the sources do not answer: told
only the rule, small models (0.5B) open their answer by copying the source's label ("[1]
(manual.pdf p. 3 · Specs)") and stop there; shown an answer, they answer in a sentence and take a
version or chapter from the heading the fact sits under, and shown a refusal, they refuse some
questions whose fact the sources lack (the checks catch most of the others)."""


def thresholds(embedder_ref: str) -> Thresholds:
    """The calibrated thresholds of an index's embedder, whatever retrieves: BM25's and hybrid's
    hits are scored by that embedder before the checks (`embedder_scores`)."""
    return CALIBRATED.get(embedder_ref, DEFAULT)


def embedder_scores(question: str, hits: Sequence[Hit], embedder: Embedder, header: bool) -> list[Hit]:
    """The hits in their retriever's order, each scored by the embedder's cosine to the question:
    BM25 and RRF scores have no scale a threshold could be calibrated on."""
    if not hits:
        return []
    vectors = embedder.texts([contextual(h.chunk) if header else h.chunk.text for h in hits])
    cos = vectors @ embedder.queries([question])[0]
    return [Hit(h.chunk, float(c)) for h, c in zip(hits, cos)]


@dataclass(frozen=True)
class Source:
    """What the model reads as one numbered source: a text under its title and heading path."""

    hit: int
    """0-based hit the text comes from."""
    heading: str
    text: str


def chunk_sources(hits: Sequence[Hit]) -> list[Source]:
    """Each hit's whole chunk under its `header` (where there are no scored sentences to pick from)."""
    return [Source(i, header(h.chunk), h.chunk.text) for i, h in enumerate(hits)]


def ask_prompt(question: str, sources: Sequence[Source]) -> str:
    """The grounded RAG prompt: numbered sources, each under its title and heading path (where a
    changelog's version or a manual's chapter is), then the question. The file and page stay out:
    they are the citation's, and a model that sees them copies them."""
    text = "\n\n".join(f"[{i}] {s.heading}\n{s.text}" if s.heading else f"[{i}] {s.text}"
                       for i, s in enumerate(sources, 1))
    return ASK_TEMPLATE.format(sources=text, question=question.strip())


# ---------------------------------------------------------------------------- the checks (pure but 3;
# checks 2 and 4 compare what the chunks state: `kinject.rag.stated`)

_PRONOUN = re.compile(r"^(?:he|she|it|they|his|her|its|their|this|these|those)\b", re.I)


def _headings(chunk: Chunk) -> set[str]:
    """A chunk's title and every part of its heading paths, lower case."""
    sections = [chunk.section, *(m.section for m in chunk.marks)]
    return {chunk.title.strip().lower()} | {p.lower() for s in sections for p in s.split(SECTION_SEP) if p}


_ITEM = re.compile(r"(?:[-*+•▪◦]|\d{1,3}[.)])[ \t]+(?=\S)")
"""A list item's marker: "- ", "* ", "• " (PDF), "1. ", "2) "."""
_HEADING_MARK = re.compile(r"#{1,6}[ \t]+(?=\S)")
_ROW = re.compile(r"^\||\s\|\s")
"""A table row: "| a | b |", "a | b" (the readers write HTML and Word tables so)."""


def units(text: str) -> list[tuple[int, int]]:
    """Spans of what a chunk states, one by one: each list item, table row and heading on its own,
    other lines cut into sentences (markers left out). A list's items end with no full stop, so
    read as one sentence a list scores as the blend of its items and none of them is found."""
    blocks: list[tuple[int, int, bool]] = []  # start, end, whether it is one unit as it stands
    for m in re.finditer(r"[^\n]+", text):
        a, b = m.start() + len(m[0]) - len(m[0].lstrip()), m.start() + len(m[0].rstrip())
        if a >= b:
            continue
        head, item = _HEADING_MARK.match(text, a, b), _ITEM.match(text, a, b)
        if head or _ROW.search(text[a:b]):
            blocks.append((head.end() if head else a, b, True))
        elif item:
            blocks.append((item.end(), b, False))
        elif blocks and not blocks[-1][2] and text.count("\n", blocks[-1][1], a) == 1:  # the line goes on
            blocks[-1] = (blocks[-1][0], b, False)
        else:
            blocks.append((a, b, False))
    return [(a + x, a + y) for a, b, whole in blocks for x, y in ([(0, b - a)] if whole else sentences(text[a:b]))]


_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
"""A markdown link or image, [text](url): its text stays."""
_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>()\[\]]+")
_EMPTY = re.compile(r"\(\s*\)|<\s*>")
"""The brackets a URL leaves behind."""


def _readable(text: str) -> str:
    """The words of a unit without link targets and URLs: a list item's URL outweighs its few
    words in the embedding."""
    return " ".join(_EMPTY.sub(" ", _URL.sub(" ", _LINK.sub(r"\1", text))).split())


def evidence_sentences(hit: Hit) -> list[tuple[tuple[int, int], str]]:
    """A chunk's `units` with their character spans (in the chunk as it is, for citations) and
    their words without URLs (to embed and quote), headings left out; one that opens with a
    pronoun gets the chunk's title in front (an article's "It weighs 14 kg." is about its title)."""
    text, title, headings = hit.chunk.text, hit.chunk.title.strip(), _headings(hit.chunk)
    out = []
    for a, b in units(text):
        s = _readable(text[a:b])
        if any(ch.isalpha() for ch in s) and s.strip("#.: ").lower() not in headings:  # a heading states nothing
            out.append(((a, b), f"{title}: {s}" if title and _PRONOUN.match(s) else s))
    return out


@dataclass(frozen=True)
class Evidence:
    """The sentences of the chunks, scored against the question."""

    sentences: list[str]
    hits: list[int]
    """0-based hit each sentence comes from."""
    spans: list[tuple[int, int]]
    """Each sentence's characters in its chunk's text (to cite its own page)."""
    vectors: np.ndarray
    scores: np.ndarray
    query: np.ndarray
    """The question's vector (to score an answer on the sentences' scale)."""

    @property
    def best(self) -> int:
        """Index of the highest-scoring sentence; -1 when there are none."""
        return int(np.argmax(self.scores)) if self.sentences else -1

    @property
    def score(self) -> float:
        """The best sentence's similarity to the question; 0 when there are none."""
        return float(self.scores[self.best]) if self.sentences else 0.0

    def cite(self, j: int, hits: Sequence[Hit]) -> str:
        """Sentence j's citation: its own page and heading where its chunk records them."""
        return citation(hits[self.hits[j]].chunk, self.spans[j])

    def quote(self, j: int, hits: Sequence[Hit], passage: str | None = None) -> str:
        """Sentence j (or `passage`, the sentence with its neighbours) as `ask` quotes it: under its
        heading path where that names a number the text lacks ("0.25.0 (11th Sep, 2023) › Removed:
        Drop support for Python 3.7."), since in a changelog or a numbered chapter the heading is
        half the fact."""
        section, said = self.section(j, hits), passage or self.sentences[j]
        return f"{section}: {said}" if stated_numbers(section) - stated_numbers(said) else said

    def section(self, j: int, hits: Sequence[Hit]) -> str:
        """The heading path sentence j sits under (where its chunk records headings inside it)."""
        chunk = hits[self.hits[j]].chunk
        return provenance(chunk.marks, *self.spans[j])[2] if chunk.marks else chunk.section


def score_sentences(question: str, hits: Sequence[Hit], embedder: Embedder) -> Evidence:
    """Every readable sentence of the hits, embedded and scored against the question."""
    found = [(i, span, s) for i, h in enumerate(hits) for span, s in evidence_sentences(h)]
    vectors = embedder.texts([s for *_, s in found]) if found else np.zeros((0, embedder.dim), np.float32)
    query = embedder.queries([question])[0]
    return Evidence([s for *_, s in found], [i for i, *_ in found], [span for _, span, _ in found], vectors,
                    vectors @ query, query)


PASSAGES = 6
"""How many of the best sentences the model reads, each with its neighbours (`WINDOW`). On the
real-folder benchmark's 48 answerable questions, 4 gave 29 answered with the fact, 6 gave 31
(and one fewer refusal of 31 missing facts)."""
WINDOW = 1


def sentence_sources(evidence: Evidence, hits: Sequence[Hit], n: int = PASSAGES, window: int = WINDOW) -> list[Source]:
    """The model's sources: the `n` sentences that score best against the question, best first
    (the first is `evidence.best`'s), each with `window` neighbours either side from its own section, under that section's heading
    path. A 0.5B model given whole changelog chunks takes the version of a neighbouring section
    (three versions' bullets in one chunk); given "httpx › 0.25.0 › Removed" right above "Drop
    support for Python 3.7." it takes the right one."""
    taken: set[int] = set()
    out: list[Source] = []
    for j in (int(x) for x in np.argsort(-evidence.scores, kind="stable")):
        if len(out) >= n:
            break
        if j in taken:
            continue
        row = [i for i, h in enumerate(evidence.hits) if h == evidence.hits[j]]
        at, section = row.index(j), evidence.section(j, hits)
        picked = [i for i in row[max(0, at - window):at + window + 1]
                  if i not in taken and evidence.section(i, hits) == section]
        taken.update(picked)
        chunk = hits[evidence.hits[j]].chunk
        out.append(Source(evidence.hits[j], header(replace(chunk, section=section)),
                          " ".join(evidence.sentences[i] for i in picked)))
    return out


RESTATES = 0.80
"""An answer this close to a sentence of the chunks restates it."""
QUOTE_MARGIN = 0.10
"""When the answer restates a sentence that scores this much less against the question than the
best one, the model answered from a neighbouring fact ("maximum delivery head?" → "The pump
weighs 14 kilograms"), and `ask` quotes the best sentence instead. A short answer ("A transform
plate boundary.") restates no sentence and is kept."""


def closeness(answer: str, evidence: Evidence, embedder: Embedder) -> np.ndarray:
    """The answer's similarity to each sentence of the evidence (citation markers left out)."""
    if not evidence.sentences:
        return np.zeros(0, np.float32)
    return evidence.vectors @ embedder.texts([CITE.sub("", answer)])[0]


def relevance(answer: str, evidence: Evidence, embedder: Embedder) -> float:
    """The answer's own score against the question, on its sentences' scale."""
    return float(embedder.texts([CITE.sub("", answer)])[0] @ evidence.query)


_HEADER = re.compile(r"^\s*(?:\[\d+\]\s*)?\([^)]*\)\s*")
"""A "[1] (manual.pdf p. 2 · Mounting)" citation copied to the front of an answer."""


def unlabelled(answer: str, hits: Sequence[Hit]) -> str:
    """The answer without the source labels a small model copies to its front: "[1] (manual.pdf p. 2
    · Mounting)" or "[2] Manual › Mounting" (a prompt source's heading line: a chunk's `header`, or
    that of any heading inside it); a citation marker alone stays."""
    labels = sorted({header(replace(h.chunk, section=s)) for h in hits for s in (h.chunk.section,
                                                                                 *(m.section for m in h.chunk.marks))}
                    - {""}, key=len, reverse=True)
    rest = answer.strip()
    while True:
        if m := _HEADER.match(rest):
            rest = rest[m.end():]
            continue
        marker = re.match(r"\[\d+\]\s*", rest)
        at = marker.end() if marker else 0
        label = next((x for x in labels if rest[at:].startswith(x) and not rest[at + len(x):at + len(x) + 1].isalnum()),
                     None)
        if label is None:
            return rest.strip()
        rest = rest[at + len(label):].lstrip(" :.-\n")


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]*")
_STOP = frozenset("the a an of to in on at is are was were be by for and or with from as that this it its "
                  "which what who when where how does do did".split())


def _content(text: str) -> set[str]:
    """A text's content words, lower case, stemmed ("approved" is "approves")."""
    return set(stemmer()([w.lower().rstrip(".:") for w in _WORD.findall(text)])) - _STOP - {""}


@functools.cache
def _filler() -> frozenset[str]:
    """Words an answer may add to a restated question and still state nothing (computed on first
    use: the stemmer is not loaded when the CLI starts)."""
    return frozenset(_content("answer answers source sources question document documents says said state states "
                              "stated according given provided information is are used use"))


def states_anything(answer: str, hits: Sequence[Hit], question: str = "") -> bool:
    """False for an answer that is only a copied source header and heading ("[1] (policy.html ·
    Holiday policy) Holiday policy"), or only the question said back ("The command lists the file
    diversions in effect [3]." to "What command lists the file diversions in effect?"): it names
    where to look but states nothing."""
    rest = CITE.sub("", unlabelled(answer, hits)).strip(" #.:;-").lower()
    return (bool(rest) and not any(rest in _headings(h.chunk) for h in hits)
            and bool(_content(rest) - _content(question) - _filler()))


def wrong_sentence(sims: np.ndarray, evidence: Evidence) -> bool:
    """Whether the answer (its `closeness`) restates a sentence much further from the question than the best."""
    if not len(sims):
        return False
    j = int(np.argmax(sims))
    return bool(sims[j] >= RESTATES and evidence.scores[j] < evidence.score - QUOTE_MARGIN)


_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]+)\"|“([^”\n]+)”")
_TOKEN = re.compile(r"\w[\w./:-]*\w")


def _specifics(text: str) -> set[str]:
    """The exact things a text names, lower case: its numbers (one spelling each), its code-like
    tokens (E19, SK-4471, update-mime-database, dh_installmime, mime.types) and its quoted or
    backticked strings."""
    quoted = {" ".join(q.split()).lower() for groups in _QUOTED.findall(text) for q in groups if q.strip()}
    tokens = {t.lower() for t in _TOKEN.findall(text)
              if any(ch.isalpha() for ch in t) and any(ch.isdigit() or ch in "_./:-" for ch in t)}
    return stated_numbers(text) | quoted | tokens


def more_specific(answer: str, quote: str, question: str, hits: Sequence[Hit], closer: bool) -> bool:
    """Whether an answer that `wrong_sentence` flags states its fact more directly than the quote
    that would replace it: it names something exact from the chunks (a number, code, command, path
    or quoted string; the question's own left out) that the quote lacks, and either the quote names
    nothing exact that the answer lacks or the answer is `closer` to the question than the quote.
    Sentence scores misjudge which sentence answers ("…must run the update-mime-database
    command…" against a sentence on MIME types in general), and an exact name that the chunks hold
    was not made up; but where both name their own ("weighs 14 kilograms" against "a delivery head
    of 38 metres") they are neighbouring facts, and only an answer nearer the question outranks
    the quote, the sentence nearest it."""
    said = _specifics(CITE.sub(" ", unlabelled(answer, hits)))
    quoted, asked = _specifics(quote), _specifics(question)
    known = set().union(*(_specifics(h.chunk.text) for h in hits))
    return bool((said & known) - quoted - asked) and (closer or not quoted - said - asked)


# ---------------------------------------------------------------------------- generation

def _no_repeat_in_answer(prompt_len: int, n: int = 3):
    """A logits processor that forbids repeating any n-gram of the answer itself. HF's own
    `no_repeat_ngram_size` and `repetition_penalty` also count the prompt, so they forbid copying
    a fact from the sources, which is what a grounded answer must do."""
    import torch
    from transformers import LogitsProcessor

    class NoRepeatInAnswer(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for row in range(input_ids.shape[0]):
                gen = input_ids[row, prompt_len:].tolist()
                if len(gen) < n:
                    continue
                prefix = gen[len(gen) - n + 1:]
                banned = [gen[i + n - 1] for i in range(len(gen) - n + 1) if gen[i:i + n - 1] == prefix]
                scores[row, banned] = float("-inf")
            return scores

    return NoRepeatInAnswer()


def generate_answer(lm: "HFBackend", prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy decoding that never repeats a 3-gram of its own answer (small models otherwise loop
    into lists like "1. 1.2.0 2. 2.1.0 …"), first paragraph only. Chat models get the grounding
    rule as a system message and their template; base models a plain transcript."""
    import torch
    from transformers import LogitsProcessorList

    from kinject.lm.backends import eos_ids, render_chat

    chat = bool(getattr(lm.tok, "chat_template", None))
    turns = [m for shown, said in ASK_EXAMPLES for m in ({"role": "user", "content": shown},
                                                          {"role": "assistant", "content": said})]
    messages = [{"role": "system", "content": ASK_SYSTEM}, *turns, {"role": "user", "content": prompt}]
    text = render_chat(lm.tok, messages) if chat else "\n\n".join(
        [ASK_SYSTEM, *(f"{shown}\nAnswer: {said}" for shown, said in ASK_EXAMPLES), f"{prompt}\nAnswer:"])
    ids = lm.tok(text, add_special_tokens=not chat, return_tensors="pt")["input_ids"]
    ids = ids.to(lm.model.get_input_embeddings().weight.device)
    eos = sorted(eos_ids(lm.model, lm.tok))
    with torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, logits_processor=LogitsProcessorList([
                                    _no_repeat_in_answer(ids.shape[1])]),
                                eos_token_id=eos, pad_token_id=lm.tok.pad_token_id or eos[0])
    answer = lm.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return answer.split("\n\n")[0].strip()


def drawn_from(answer: str, passages: Sequence[str]) -> int | None:
    """The passage an answer draws on when it cites none: the first of those sharing the most
    content words with it; None when it shares none with any (or there are none). `ask` and the
    free-form grade's citation precision both ask this."""
    def words(text: str) -> set[str]:
        return {w.lower().rstrip(".:") for w in _WORD.findall(text)} - _STOP

    said = words(answer)
    overlap = [len(said & words(p)) for p in passages]
    best = max(overlap, default=0)
    return overlap.index(best) if best else None


def used_sources(answer: str, texts: Sequence[str]) -> list[int]:
    """The 0-based sources (of the prompt's `texts`) an answer used: those it cites as [n]; else the
    one it draws on (the first when it shares no word with any)."""
    marked = {int(n) for group in CITE.findall(answer) for n in re.findall(r"\d+", group)}
    cited = sorted(n - 1 for n in marked if 0 < n <= len(texts))
    return cited or [drawn_from(answer, texts) or 0]


def is_abstention(answer: str) -> bool:
    """Whether a reply declines (small models write "knowledgebase" too)."""
    flat = " ".join(answer.lower().split()).replace("knowledgebase", "knowledge base")
    return not flat or "not in the knowledge base" in flat


# ---------------------------------------------------------------------------- ask

@dataclass(frozen=True)
class Answer:
    """What `ask` replies: the text, or an abstention, with the hits it rests on and where to look."""
    text: str
    abstained: bool
    why: str
    """For an abstention: which check refused, in words a person reads after "Not in the
    knowledge base"; for a quoted sentence, why; empty for the model's own answer."""
    hits: list[Hit]
    used: list[int]
    """0-based hits the answer drew on; for an abstention, the closest one."""
    check: str
    """What decided: "off-topic", "code", "sentence", "model" or "number" (the checks that
    abstain), "quoted", or "answered"."""
    cited: list[str]
    """Where to look, one per `used` hit: the page and heading of the sentence the answer rests
    on where the chunk records them, else the chunk's."""


def _refusal(check: str, why: str, hits: Sequence[Hit], at: int = 0, cited: str | None = None) -> Answer:
    return Answer(ABSTAIN, True, why, list(hits), [at], check, [cited or citation(hits[at].chunk)])


def strong_hits(hits: Sequence[Hit], limits: Thresholds) -> list[Hit]:
    """The hits an answer may rest on: a chunk too weak to answer from is no source either."""
    return [h for h in hits if h.score >= limits.chunk]


def check_chunks(question: str, hits: Sequence[Hit], limits: Thresholds,
                 embedder: Embedder | None) -> Answer | Evidence | None:
    """Checks 1-3 of the module docstring, before any LM: an abstention, else the chunks'
    sentences scored against the question (None without an embedder). Then go on with the hits
    that clear the chunk threshold."""
    at = max(range(len(hits)), key=lambda i: hits[i].score)  # BM25's first hit need not be the closest
    if hits[at].score < limits.chunk:
        return _refusal("off-topic", f"the closest chunk scores {hits[at].score:.2f}, below {limits.chunk:.2f}: "
                        f"{citation(hits[at].chunk)}", hits, at)
    hits = strong_hits(hits, limits)
    codes = unknown_codes(question, hits)
    if codes := codes + [v for v in unknown_versions(question, hits) if not any(v in c for c in codes)]:
        return _refusal("code", f"no retrieved chunk mentions {', '.join(codes)}", hits)
    if embedder is None:
        return None
    evidence = score_sentences(question, hits, embedder)
    if limits.sentence <= 0:  # the check is off; the sentences still serve quoting and citations
        return evidence if evidence.sentences else None
    if not evidence.sentences:
        return _refusal("sentence", f"the {len(hits)} closest chunks hold no sentence", hits)
    if evidence.score < limits.sentence:
        j = evidence.best
        return _refusal("sentence", f"no sentence of the {len(hits)} closest chunks states it; the closest scores "
                        f"{evidence.score:.2f}, below {limits.sentence:.2f}: \"{evidence.sentences[j]}\"", hits,
                        evidence.hits[j], evidence.cite(j, hits))
    return evidence


def answer_question(retriever: Retriever, load_lm: Callable[[], "HFBackend"], question: str, k: int,
                    limits: Thresholds, groups: Sequence[str] | None = None, max_new_tokens: int = 64) -> Answer:
    """Retrieve, run the checks of the module docstring (the LM is loaded only when 1-3 pass),
    answer from the chunks that clear the chunk threshold, keep the ones the answer used; quote
    the best sentence where the answer came from a worse one, unless the answer is `more_specific`."""
    hits = retriever.search([question], k, groups)[0]
    if not hits:
        raise KinjectError("no chunk is open to the given --groups; nothing to answer from")
    embedder = getattr(getattr(retriever, "dense", retriever), "embedder", None)  # a hybrid's dense half embeds
    if embedder is not None and isinstance(retriever, (BM25Retriever, HybridRetriever)):
        hits = embedder_scores(question, hits, embedder, getattr(retriever, "context_header", False))
    evidence = check_chunks(question, hits, limits, embedder)
    if isinstance(evidence, Answer):
        return evidence
    hits = strong_hits(hits, limits)
    sources = sentence_sources(evidence, hits) if evidence is not None else chunk_sources(hits)
    text = generate_answer(load_lm(), ask_prompt(question, sources), max_new_tokens)
    text = unlabelled(text, hits) or text
    if is_abstention(text):
        return _refusal("model", f"the model found no answer in the {len(hits)} closest chunks", hits)
    if made_up := unsupported_numbers(text, question, hits):
        return _refusal("number", f"the model's answer states {', '.join(made_up)}, which no chunk does: \"{text}\"", hits)
    used = list(dict.fromkeys(sources[i].hit for i in used_sources(text, [s.text for s in sources])))
    if evidence is None or embedder is None:
        return Answer(text, False, "", hits, used, "answered", [citation(hits[i].chunk) for i in used])
    sims = closeness(text, evidence, embedder)
    empty = not states_anything(text, hits, question)
    j = evidence.best
    # the best sentence with its neighbours, as the model read it (the first source): the fact is
    # often in the next sentence
    quote = evidence.quote(j, hits, sources[0].text)
    if empty or (wrong_sentence(sims, evidence) and not more_specific(
            text, quote, question, hits, relevance(text, evidence, embedder) >= evidence.score)):
        flaw = "which states nothing" if empty else "a sentence further from the question"
        return Answer(quote, False, f"quoted from the source: the model answered \"{text}\", {flaw}",
                      hits, [evidence.hits[j]], "quoted", [evidence.cite(j, hits)])
    # each used chunk cited by the sentence of it closest to the answer
    closest = [max((j for j, h in enumerate(evidence.hits) if h == i), key=lambda j: sims[j], default=None)
               for i in used]
    return Answer(text, False, "", hits, used, "answered",
                  [citation(hits[i].chunk) if j is None else evidence.cite(j, hits) for i, j in zip(used, closest)])
