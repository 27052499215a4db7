"""A document's furniture: licence and copyright text, reference lists, tables of contents and
indexes, running headers, site navigation, links and addresses. None of it is the document's
subject, so a question cut from it tests nothing a reader learnt (`kinject.tasks.cloze` skips it)."""

from __future__ import annotations

import re

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
UPPER = "A-ZÀ-ÖØ-Þ"
LOWER = "a-zß-öø-ÿāēīōūćčęłńśšźżğışőű"
LEADING_WORDS = {"The", "A", "An", "In", "On", "At", "As", "It", "Its", "With", "According", "Since", "During", "After",
            "Before", "This", "These", "Those", "Despite", "Although", "While", "For", "From", "By", "Until", "Use",
            "See", "Also", "If", "When", "Some", "Many", "Most", "All", "Both", "Each", "His", "Her", "Their",
            "Our", "We", "You", "They", "He", "She", "There", "Here", "Unlike", "Like", "Following", "Under",
            "Over", "Between", "Among", "Other", "Another", "Previously", "However", "Thanks", "Note",
            "Mainstream", "Extended", "What", "Changes", "Version", "Upstream", "Added", "Removed", "Support",
            "Any", "Every", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", *MONTHS}


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]|`([^`<]+?)\s*<[^>]+>`_+")
_PAREN_URL = re.compile(r"\s*\((?:https?://|www\.)[^)]*\)")
_ISSUE_REFS = re.compile(r"\s*\((?:[\w./-]*#\d+[,;]?\s*)+\)")
_FOOTNOTE = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+|¶|\s?\[\d{1,3}\]")
_ADDRESS = re.compile(r"https?://|ftp://|\bwww\.|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|"
                      r"\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|io|dev|edu|gov)\b(?![\w(])", re.I)
_LICENCE = re.compile(
    r"copyright|©|\(c\)\s*\d{4}|all rights reserved|permission is (?:hereby )?granted|licen[cs]ed under|"
    r"under (?:the )?(?:terms of|licen[cs]e)|redistribution and use|redistributions of|as is[\"”]? and|"
    r"merchantability|without (?:any )?warranty|(?:general public|free documentation|creative commons|"
    r"gnu|apache|mit|bsd) licen[cs]e|\bspdx\b|trademarks? of", re.I)
_BIBLIO = re.compile(
    r"\bet al\.|\bpp?\.\s*\d|\bvol\.\s*\d|\bdoi\b|\bisbn\b|\bissn\b|\barxiv\b|\bin proceedings\b|\bproc\.\s|"
    r"\(eds?\.\)|\bjournal of\b|\bretrieved (?:on |from )|\d+\s*\(\d+\)\s*:\s*\d+|"
    rf"\b[{UPPER}][{LOWER}]+,\s(?:[{UPPER}]\.\s?){{1,3}}(?:,|\(|and\b|&)|(?:^|\.\s)[{UPPER}]\.\s[{UPPER}][{LOWER}]+[.,]|"
    r"[“\"][^”\"]{3,}[.,][”\"]\s*(?:In\s|[A-Z][\w ]+[.,])")
_TOC = re.compile(
    r"\.{4,}|(?:\.\s){3,}|…\s*\d|^(?:chapter|appendix|part|section|lesson)\s+[\dIVXL]+\b|"
    r"^\d+(?:\.\d+)*\s+[^.!?]{3,80}\s\d{1,4}$|[A-Za-z,]\s\d{1,4}$|^contents\b", re.I)
_PAGES = r"\d{1,4}(?:\s*[–-]\s*\d{1,4})?"
_INDEX_ENTRY = re.compile(rf"[A-Za-z)]\s*,\s*{_PAGES}(?:\s*,\s*{_PAGES})+\b")
_HEADER = re.compile(
    r"\b[Pp]age \d+ of \d+\b|\b(?:CHAPTER|APPENDIX|SECTION)\s+[\dIVX]+\b|"
    r"\b[A-Z]{2,}\s+(?:THE|OF|AND|IN|FOR|TO|WITH|ON|OR|IS|ARE|NOT|BY|AS)\s+[A-Z]{2,}\s+[A-Z]{2,}\b|"
    r"(?:\b[A-Z]{3,}\s+){3}|"
    r"^\d+(?:\.\d+){2,}\s|^\d+(?:\.\d+)+\.?\s+(?:[A-Z]|[a-z][\w-]*[._-]\w)|^\d+[.)]\s|^\d{1,3}\s+\d|\b\d{1,4}\s+•|"
    rf"^\d{{1,3}}\s+(?:{'|'.join(sorted(LEADING_WORDS))})\b|\d\s+(?:Chapter|Appendix)\s+[\dA-Z]+\.?$|"
    r"(?<![\w.])\d{1,3}[A-Z][a-z]{2,}")
_NAVIGATION = re.compile(
    r"\b(?:previous|next) (?:topic|page|chapter|section)\b|\bskip to (?:main )?content\b|\bback to top\b|"
    r"\bedit (?:this page|on github)\b|\b(?:show|view page) source\b|\bon this page\b|"
    r"\btoggle (?:navigation|menu|sidebar)\b|\bcreated using sphinx\b|\bbuilt with mkdocs\b|"
    r"\bwas this page helpful\b|[«»]|"
    r"^see\b|^(?:for (?:more|further) (?:details|information)|please consult|consult)\b|"
    r"\bsee (?:\S+ ){0,6}for (?:more |further |full )?(?:details|information)\b|"
    r"\bcheck (?:\S+ ){0,4}for more information\b", re.I)
_ADMONITION = r"(?:Tip|Note|Caution|Warning|Important)"
_OPENS = r"(?:The|This|These|That|When|If|In|It|You|See|For|Use|Any|A|An|To|Do|Please|Some|Most|Make|Never|Always)\b"
"""Words a sentence starts with: after an admonition's label they mark the box's first sentence
("Tip When filing …"), where "the Note Editor" or "Warning Level" is a name."""
_GLUED = re.compile(rf"[{LOWER}]{{21,}}|[{LOWER}]{{2,}}[.!?,;:](?:{'|'.join(sorted(LEADING_WORDS))})\b|[{UPPER}]{{30,}}|"
                    rf"[\w)\]]\s{_ADMONITION}\s{_OPENS}")
"""Words run together, and an admonition box's label glued into the text before it ("…15:19:24
UTC Tip When filing a bug report"): a PDF extractor's seams."""
_TABLE = re.compile(r"\bTable \d+(?:\.\d+)*:|\b[VI]:\d+,\s*[VI]:\d+|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{12,}\b")
"""A table's caption or cells, or a hash in a program's output, flattened into a "sentence"."""
_CODE_LINE = re.compile(r"\|.*\|.*\||(?:^|\s)#\s|(?:\b\w+_\w+\s+){4}|\bdef \w+\(|\bclass \w+\(|\bself\.\w|>>>|\w\(\[|^\$ |"
                        r"\w+\(\S*\)\s+\w+\(")
FENCE = "```"
"""Marks a preformatted block (a code listing, a shell session and its output) in a document's text,
as markdown does (the HTML reader fences every `<pre>`): examples and program output, not prose."""


def code_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` inside fenced blocks, fences included. A chunk may begin inside a
    block: with an odd number of fences, the first closes one unless it opens the text or follows
    a colon (code is introduced by "…as follows:")."""
    at = [m.start() for m in re.finditer(re.escape(FENCE), text)]
    ranges: list[tuple[int, int]] = []
    if len(at) % 2 and at[0] > 0 and not text[:at[0]].rstrip().endswith(":"):
        ranges.append((0, at[0] + len(FENCE)))
        at = at[1:]
    ranges += [(a, b + len(FENCE)) for a, b in zip(at[::2], at[1::2])]
    if len(at) % 2:  # an opened block runs past the chunk's end
        ranges.append((at[-1], len(text)))
    return ranges


FURNITURE_TITLES = {"license", "licence", "copyright", "legal notice", "index", "contents", "table of contents",
                    "bibliography", "references", "credits", "acknowledgements", "acknowledgments", "colophon"}
GENERIC_TITLES = {"keyboard shortcuts", "search", "search results", "navigation", "menu", "home", "untitled",
                  "page not found", "404", "document"}
FURNITURE_SHARE = 0.3
"""A chunk whose sentences are this much furniture is a title page, a contents page or a licence:
its other sentences (a publication date, a project's name) are furniture too."""


def clean_sentence(sentence: str) -> str:
    """The sentence a reader of the page sees: links reduced to their text, parenthesised URLs,
    issue references, footnote marks and pilcrows gone."""
    text = _MD_LINK.sub(lambda m: m[1] or m[2] or m[3] or "", sentence)
    text = _FOOTNOTE.sub("", _ISSUE_REFS.sub("", _PAREN_URL.sub("", text)))
    # a box's label: "Note: The …", "Note The …", "Caution Invoking …" ("Warning Messages appear" is a name)
    text = re.sub(rf"^(?:{_ADMONITION}(?::\s+|\s+(?={_OPENS}))|(?:Tip|Caution)\s+(?=[{UPPER}]))", "", text.lstrip())
    return " ".join(re.sub(r"(?<=[^.][.!?])\s*\.(?=\s|$)", "", text).split())  # "option. (#2092)." → "option."


def has_address(text: str) -> bool:
    """A URL or an e-mail address: a question would ask for a piece of it."""
    return _ADDRESS.search(text) is not None


def is_licence(text: str) -> bool:
    """Copyright lines, licence and permission boilerplate."""
    return _LICENCE.search(text) is not None


def is_bibliography(text: str) -> bool:
    """A reference-list entry: authors' initials, "et al.", volume and pages, a quoted title."""
    return _BIBLIO.search(text) is not None


def is_contents(text: str) -> bool:
    """A table-of-contents or index line: dot leaders, trailing page numbers, "Chapter N"."""
    return _TOC.search(text) is not None or len(_INDEX_ENTRY.findall(text)) >= 2


def is_page_header(text: str) -> bool:
    """A heading, or a running header or footer fused into the text: "CHAPTER 4. FUNCTIONS 23",
    a leading section number, "Page 3 of 12"."""
    heading = len(text.split()) <= 12 and not re.search(r"[.!?:;)\"”’]$", text)
    return heading or _HEADER.search(text) is not None


def is_navigation(text: str) -> bool:
    """Site navigation and cross-references ("Next topic", "See the guide for details")."""
    return _NAVIGATION.search(text) is not None


def is_table(text: str) -> bool:
    """Table cells or program output read as a sentence: a table's caption, popularity-contest
    columns, a commit or object hash. (A share of numbers is no test: "Django 6.1 supports Python
    3.12, 3.13, 3.14 and 3.15" is a fact.)"""
    return _TABLE.search(text) is not None


def is_garbled(text: str) -> bool:
    """Words run together by a PDF extractor ("withoutrebootingthesystem", "suffice.This"), a
    line of code or a flattened table: no sentence a reader could be asked about."""
    return _GLUED.search(text) is not None or _CODE_LINE.search(text) is not None or is_table(text)


def is_furniture(text: str) -> bool:
    """Any of the above: the sentence is about the document, not its subject."""
    return (has_address(text) or is_licence(text) or is_bibliography(text) or is_contents(text)
            or is_page_header(text) or is_navigation(text) or is_garbled(text))


def question_title(title: str) -> str:
    """The document's title as the question's prefix, without a pilcrow or a section or chapter
    number ("2. Using the interpreter¶", "Chapter 6. Maintenance and Updates"); empty when it is
    generic navigation ("Keyboard shortcuts")."""
    plain = re.sub(r"^(?:(?:Chapter|Appendix|Part|Section)\s+(?:[A-Z]|[IVXL]+|\d{1,2})\.?\s+|\d{1,2}(?:\.\d{1,2})*\.\s+)(?=\S)",
                   "", title.replace("¶", "").strip())
    return "" if plain.lower() in GENERIC_TITLES else plain
