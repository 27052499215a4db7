"""The user's own files: PDF (text layer, page numbers kept), HTML (main text only, headings kept),
Word .docx (headings kept), plain text and markdown, JSONL and MediaWiki dumps, alone or mixed in
a folder whose `groups.yaml` may give access groups by glob.

Every reader returns cleaned text plus `Mark`s (page, heading path) so each chunk can be cited as
"manual.pdf p. 12 · Installation › Requirements". A file that cannot be read is a one-line
`KinjectError` naming it; in a folder read with `skip_bad` it is left out and counted instead.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kinject.core.errors import KinjectError, error_line
from kinject.core.fsio import read_text
from kinject.knowledge.corpus import SECTION_SEP, Document, Mark, clean, read_jsonl, read_mediawiki
from kinject.knowledge.furniture import FENCE

KINDS = {".pdf": "pdf", ".html": "html", ".htm": "html", ".xhtml": "html", ".docx": "docx",
         ".txt": "text", ".rst": "text", ".md": "markdown", ".markdown": "markdown",
         ".jsonl": "jsonl", ".xml": "mediawiki"}
"""File suffix → reader; any other file in a folder is ignored (and counted)."""
GROUPS_FILE = "groups.yaml"
SUPPORTED_HELP = ".pdf, .html, .docx, .txt, .md, .rst, .jsonl or a MediaWiki .xml dump"


@dataclass
class Tally:
    """What a read found: files read by kind, PDF pages, files skipped (with the reason) and
    files of other types that were ignored (by suffix)."""
    files: Counter = field(default_factory=Counter)
    pages: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    redirects: list[str] = field(default_factory=list)
    generated: list[tuple[str, str]] = field(default_factory=list)
    """(file, what it duplicates or why it is no text): see `generated_pages`."""

    def notes(self) -> list[str]:
        """Lines telling the user what was left out, and why."""
        lines = []
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad file(s) (--skip-bad): "
                         + "; ".join(reason for _, reason in self.skipped))
        if self.redirects:
            lines.append(f"left out {len(self.redirects)} redirect page(s) (no text of their own): "
                         + ", ".join(self.redirects[:3]) + (" …" if len(self.redirects) > 3 else ""))
        if self.generated:
            lines.append(f"left out {len(self.generated)} generated file(s) (a markup source beside its page, a "
                         f"site's index or code listing): " + ", ".join(f"{f} ({why})" for f, why in self.generated[:3])
                         + (" …" if len(self.generated) > 3 else ""))
        if self.ignored:
            kinds = ", ".join(f"{s or '(no suffix)'} ×{n}" for s, n in sorted(self.ignored.items()))
            lines.append(f"ignored {sum(self.ignored.values())} file(s) of other types ({kinds}); "
                         f"kinject reads {SUPPORTED_HELP}")
        return lines


# ---------------------------------------------------------------------------- building text with marks


class _Text:
    """Cleaned blocks joined by blank lines, with a mark wherever the page or heading path changes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.marks: list[Mark] = []
        self.size = 0
        self.heads: list[tuple[int, str]] = []

    def heading(self, level: int, text: str, page: int = 0) -> None:
        text = clean(text).replace("\n", " ")
        if not text:
            return
        while self.heads and self.heads[-1][0] >= level:
            self.heads.pop()
        self.heads.append((level, text))
        self.add(text, page)

    def path(self, titles: list[str]) -> None:
        """Set the heading path outright (a PDF's outline gives it per page)."""
        self.heads = list(enumerate(titles, 1))

    def add(self, text: str, page: int = 0) -> None:
        text = clean(text)
        if not text:
            return
        if self.parts:
            self.size += 2
        mark = Mark(self.size, page, SECTION_SEP.join(h for _, h in self.heads))
        if not self.marks or (self.marks[-1].page, self.marks[-1].section) != (mark.page, mark.section):
            self.marks.append(mark)
        self.parts.append(text)
        self.size += len(text)

    def document(self, doc_id: str, title: str, source: str) -> Document:
        return Document(doc_id, title, "\n\n".join(self.parts), source=source, marks=tuple(self.marks))


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^(=+|-+)[ \t]*$")


def markdown_marks(text: str) -> tuple[Mark, ...]:
    """Heading-path marks of markdown text (ATX `#` and setext headings; fenced code skipped).
    The text itself is left as it is, so chunk ids of markdown files do not change."""
    marks: list[Mark] = []
    heads: list[tuple[int, str]] = []
    offset, fenced, prev = 0, False, (0, "")
    for line in text.split("\n"):
        level, title = 0, ""
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := _MD_HEADING.match(line)):
            level, title, start = len(m.group(1)), m.group(2).strip(), offset
        elif not fenced and prev[1].strip() and _SETEXT.match(line) and not prev[1].startswith(("-", "*", "#")):
            level, title, start = (1 if line.startswith("=") else 2), prev[1].strip(), prev[0]
        if title:
            while heads and heads[-1][0] >= level:
                heads.pop()
            heads.append((level, title))
            marks.append(Mark(start, 0, SECTION_SEP.join(h for _, h in heads)))
        prev = (offset, line)
        offset += len(line) + 1
    return tuple(marks)


# ---------------------------------------------------------------------------- one reader per format


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The libraries log recoverable oddities of a file on stderr; kinject reports one line or none."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in saved:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def page_ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] → "1-3, 7"."""
    out: list[str] = []
    for p in pages:
        if out and int(out[-1].rsplit("-", 1)[-1]) == p - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ", ".join(out)


_PAGE_NO = re.compile(r"^(page\s*)?[-–—\s]*\d{1,4}(\s*(of|/)\s*\d{1,4})?[-–—\s]*$", re.I)
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-\n(?=[a-z])")
_LEADERS = re.compile(r"(?:\.\s?){4,}")
"""Dot leaders of a table of contents."""


def _strip_running_lines(pages: list[str]) -> list[str]:
    """Drop page numbers and the running headers/footers that repeat on most pages (their digits
    ignored): they are boilerplate that would otherwise land in every chunk."""
    def key(line: str) -> str:  # page numbers, arabic or roman, do not tell lines apart
        return re.sub(r"\b[ivxlcdm]+\b|\d+", "#", line.strip().lower())

    lines = [p.split("\n") for p in pages]
    counts = Counter(k for ls in lines for k in {key(ln) for ln in ls[:3] + ls[-3:] if ln.strip()})
    running = {k for k, n in counts.items() if len(pages) >= 2 and n >= max(2, (len(pages) + 1) // 2)}
    return ["\n".join(ln for i, ln in enumerate(ls)
                      if not (_PAGE_NO.match(ln.strip()) or ((i < 3 or i >= len(ls) - 3) and key(ln) in running)))
            for ls in lines]


def _page_texts(data: bytes, reader) -> list[str]:
    """Each page's text layer, by PDFium (pypdfium2): it places word gaps from the glyphs'
    positions, where pypdf's content-stream reading glues the words of PDFs that space them by
    offsets rather than space characters ("Thisdocumentgivesfrequentlyaskedquestions", the
    Debian FAQ). pypdf's own reading stands in for a file PDFium cannot open."""
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError:
        return [page.extract_text() or "" for page in reader.pages]
    try:
        texts = []
        for i in range(len(pdf)):
            page = pdf[i]
            textpage = page.get_textpage()
            text = textpage.get_text_bounded()
            textpage.close()
            page.close()
            texts.append(text.replace("\r\n", "\n").replace("\r", "\n").replace("\x02", "-\n").replace("\ufffe", "-\n"))
        return texts
    finally:
        pdf.close()


def read_pdf(path: Path, source: str) -> Document:
    """The text layer of each page (PDFium), page numbers kept; a PDF with no text layer (a scan)
    or that is encrypted is an error that says what to do."""
    import pypdf

    data = path.read_bytes()
    if b"%PDF-" not in data[:1024]:
        raise KinjectError(f"{path}: not a PDF file (no %PDF header); re-export it as PDF")
    with _quiet("pypdf"):
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise KinjectError(f"{path}: encrypted PDF (needs a password); save a decrypted copy")
            texts = _page_texts(data, reader)
            meta_title = (reader.metadata or {}).get("/Title")
            outline = _outline(reader)
        except KinjectError:
            raise
        except Exception as exc:  # noqa: BLE001 - pypdf raises many types for a damaged file
            if isinstance(exc, (pypdf.errors.FileNotDecryptedError, pypdf.errors.DependencyError)):
                raise KinjectError(f"{path}: encrypted PDF (needs a password); save a decrypted copy") from exc
            raise KinjectError(f"{path}: unreadable PDF ({error_line(exc, 200, named=True)}); re-export it") from exc
    if not texts:
        raise KinjectError(f"{path}: the PDF has no pages")
    empty = [i for i, t in enumerate(texts, 1) if not t.strip()]
    if len(empty) == len(texts):
        raise KinjectError(f"{path}: no text layer on pages {page_ranges(empty)}; OCR it first (e.g. ocrmypdf)")
    body = _Text()
    for page, text in enumerate(_strip_running_lines(texts), 1):
        text = _LEADERS.sub(" … ", _HYPHEN_BREAK.sub("", text))
        start = 0
        for p, titles in outline:  # cut the page where an outline entry's heading starts
            if p != page:
                continue
            at = _find_heading(text, titles[-1], start)
            body.add(text[start:at], page)
            body.path(titles)
            start = at
        body.add(text[start:], page)
    title = meta_title.strip() if isinstance(meta_title, str) and meta_title.strip() else path.stem.replace("_", " ")
    return body.document(f"file/{source}", title, source)


def _outline(reader) -> list[tuple[int, list[str]]]:
    """(1-based page, heading path) of each entry of a PDF's outline (bookmarks), in order; empty
    when it has none or it cannot be read (the text is still read)."""
    entries: list[tuple[int, list[str]]] = []

    def walk(items: list, parents: list[str]) -> None:
        last: list[str] | None = None
        for item in items:
            if isinstance(item, list):
                walk(item, last if last is not None else parents)
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            page = reader.get_destination_page_number(item)
            if title and page is not None and page >= 0:
                last = parents + [title]
                entries.append((page + 1, last))

    try:
        walk(reader.outline, [])
    except Exception:  # noqa: BLE001 - a damaged outline costs the headings, not the text
        return []
    return sorted(entries, key=lambda e: e[0])


def _find_heading(text: str, title: str, start: int) -> int:
    """Where a heading's line starts in a page's text (from `start`); `start` when not found."""
    words = [re.escape(w) for w in title.split()]
    m = re.compile(r"\s+".join(words), re.I).search(text, start) if words else None
    return text.rfind("\n", 0, m.start()) + 1 if m and text.rfind("\n", 0, m.start()) >= start else \
        (m.start() if m else start)


_CHROME_TAGS = ("nav", "header", "footer", "script", "style", "noscript", "form", "button", "dialog", "template",
                "select", "input", "svg")
_CHROME_ROLES = {"navigation", "search", "banner", "contentinfo", "dialog", "alertdialog", "toolbar", "menu"}
_CHROME_WORD = re.compile(
    r"(?:^|[-_ ])(?:sidebar|sphinxsidebar|navbar|nav|menu|menu-bar|toc|breadcrumbs?|footer|related|search|searchbox|"
    r"modal|help|dialog|pagination|prev|next|previous|edit|edit-this-page|skip|cookies?|banner|headerlink|"
    r"version_switcher_placeholder|language_switcher_placeholder|mobile-nav|nav-wrapper|theme-popup|"
    r"sidebarbutton)(?:$|[-_ ])", re.I)
_MAIN = ("//main", "//*[@role='main']", "//article", "//div[contains(concat(' ', @class, ' '), ' body ')]",
         "//*[@id='content']")
_TITLE_SEP = re.compile(r"\s+(?:[-|·•:—–]{1,2}|::|»)\s+")
_SITE_WORDS = re.compile(r"\b(?:documentation|docs?|book|manual|guide|handbook|reference|wiki|site|blog|"
                         r"homepage|tutorial)\b", re.I)
_GENERIC_TITLES = {"", "redirecting...", "redirecting", "untitled", "index", "home", "document"}


def _is_chrome(el) -> bool:
    """A site's furniture rather than its text: navigation, sidebars, search, dialogs such as
    mdBook's "Keyboard shortcuts" help, previous/next links and "edit this page"."""
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag in _CHROME_TAGS or (el.get("role") or "").lower() in _CHROME_ROLES or el.get("hidden") is not None \
            or el.get("aria-hidden") == "true":
        return True
    if tag == "aside":
        return "footnote" not in (el.get("class") or "")
    names = f"{el.get('id') or ''} {el.get('class') or ''}"
    return tag not in ("html", "body", "main", "article", "code", "pre", "span") and bool(_CHROME_WORD.search(names))


def _strip_chrome(tree) -> None:
    for el in list(tree.iter()):
        if el.getparent() is not None and _is_chrome(el):
            el.getparent().remove(el)


def _fence_preformatted(tree) -> None:
    """Every outermost `<pre>` becomes its text between fences inside one `<code>`, so that the
    block stays marked as code after extraction and keeps its lines (trafilatura renders a bare
    `<pre>` or a `<pre class="screen">` as a quote and runs its lines together; a `<code>` it keeps
    as it is)."""
    from lxml import etree

    outermost = [pre for pre in tree.iter("pre") if next(pre.iterancestors("pre"), None) is None]
    for pre in outermost:  # mdBook nests its playground's <pre> in another
        body = pre.text_content().strip("\n")
        for child in list(pre):
            pre.remove(child)
        pre.text = None
        etree.SubElement(pre, "code").text = f"{FENCE}\n{body}\n{FENCE}"


def redirect_stub(path: Path) -> bool:
    """A page file that is a redirect stub; an unreadable one is not (its reader says why)."""
    import lxml.html

    try:
        return _redirect(lxml.html.document_fromstring(path.read_bytes()))
    except Exception:  # noqa: BLE001 - read_html names the damage when the page is read
        return False


def _redirect(tree) -> bool:
    """A stub that only sends the browser elsewhere (MkDocs and Sphinx leave these behind)."""
    refresh = tree.xpath("//meta[translate(@http-equiv, 'REFSH', 'refsh')='refresh']")
    return bool(refresh) and len(" ".join(tree.xpath("//body//text()")).split()) < 40


_BRAND = ("//meta[@property='og:site_name']/@content", "//*[contains(@class, 'brand')]//text()",
          "//*[contains(@class, 'menu-title')]//text()", "//*[contains(@class, 'navbar__title')]//text()",
          "//*[contains(@class, 'site-name')]//text()")


def site_names(tree) -> set[str]:
    """The site's own name as its chrome shows it (og:site_name, a navbar brand, mdBook's menu
    title), so it can be cut from each page's `<title>`."""
    return {n.lower() for xp in _BRAND if (n := " ".join(" ".join(tree.xpath(xp)).split()))}


def page_title(raw: str, heading: str, sites: set[str] = frozenset()) -> str:
    """A page's own title: its `<title>` without the site's name (" - The rustc book",
    " — Python 3.11 documentation", "| Site"), else the first heading of its text."""
    raw, heading = " ".join(raw.split()), " ".join(heading.replace("¶", "").split())
    if raw.lower() in _GENERIC_TITLES:
        return heading
    if heading and raw.lower().startswith(heading.lower()):
        return heading
    parts = [p for p in _TITLE_SEP.split(raw) if p.strip()]
    if len(parts) == 1:
        return raw
    for p in parts:  # the part that is the page's own heading
        if heading and p.strip().lower() == heading.lower():
            return p.strip()
    parts = [p for p in parts if p.strip().lower() not in sites] or parts
    while len(parts) > 1 and _SITE_WORDS.search(parts[-1]):
        parts.pop()
    while len(parts) > 1 and _SITE_WORDS.search(parts[0]) and not _SITE_WORDS.search(parts[-1]):
        parts.pop(0)
    return " - ".join(parts).strip() or heading


def read_html(path: Path, source: str) -> Document | None:
    """The main text of a web page, with its headings as the heading path; None for a redirect
    stub. The site's chrome is cut out before trafilatura sees the page (it would otherwise take
    a sidebar or a hidden help dialog for text or for the title), and the title comes from
    `<title>` without the site's name."""
    import lxml.html
    import trafilatura
    from lxml import etree

    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise KinjectError(f"{path}: binary content, not an HTML page")
    try:
        tree = lxml.html.document_fromstring(data)
    except Exception as exc:  # noqa: BLE001 - a parser failure on a damaged page
        raise KinjectError(f"{path}: unreadable HTML ({error_line(exc, 200, named=True)})") from exc
    if _redirect(tree):
        return None
    raw_title, sites = " ".join(tree.xpath("//head/title//text()")), site_names(tree)
    _strip_chrome(tree)
    _fence_preformatted(tree)
    main = next((m[0] for xp in _MAIN if (m := tree.xpath(xp))), None)
    page = lxml.html.tostring(main if main is not None else tree, encoding="unicode")
    with _quiet("trafilatura", "htmldate", "courlan"):
        try:
            xml = trafilatura.extract(f"<html><body>{page}</body></html>", output_format="xml", favor_recall=True,
                                      include_comments=False, include_tables=True, include_formatting=False,
                                      include_images=False, include_links=False, deduplicate=False)
        except Exception as exc:  # noqa: BLE001 - a parser failure on a damaged page
            raise KinjectError(f"{path}: unreadable HTML ({error_line(exc, 200, named=True)})") from exc
    body = _Text()
    root = etree.fromstring(xml.encode()) if xml else None
    main_xml = root.find("main") if root is not None else None
    first_heading = ""
    for el in (main_xml if main_xml is not None else []):
        raw = "".join(el.itertext())
        text = " ".join(raw.replace("¶", "").split())
        if raw.lstrip().startswith(FENCE):  # a preformatted block keeps its lines
            body.add(raw.strip())
        elif el.tag == "head":
            level = int(m.group(1)) if (m := re.search(r"(\d)", el.get("rend", ""))) else 2
            first_heading = first_heading or text
            body.heading(level, text)
        elif el.tag == "list":
            body.add("\n".join("- " + " ".join("".join(i.itertext()).split()) for i in el.iter("item")))
        elif el.tag == "table":
            body.add("\n".join(" | ".join(" ".join("".join(c.itertext()).split()) for c in row.iter("cell"))
                               for row in el.iter("row")))
        else:
            body.add(text)
    if not first_heading:
        first_heading = " ".join(" ".join(tree.xpath("(//h1)[1]//text()")).replace("¶", "").split())
    doc = body.document(f"file/{source}", page_title(raw_title, first_heading, sites) or path.stem, source)
    if len(doc.text.split()) < 5:
        raise KinjectError(f"{path}: no main text (only navigation, scripts or boilerplate); "
                           f"save the page's article, not its frame")
    return doc


def read_docx(path: Path, source: str) -> Document:
    """Paragraphs and tables of a Word file in order; `Heading N` styles form the heading path."""
    import docx

    if not path.read_bytes()[:4] == b"PK\x03\x04":
        raise KinjectError(f"{path}: not a .docx file (not a zip package); save it as .docx")
    try:
        word = docx.Document(str(path))
        title = word.core_properties.title or ""
        body = _Text()
        for block in word.iter_inner_content():
            if hasattr(block, "rows"):  # a table: one line per row, merged cells once
                rows = []
                for row in block.rows:
                    cells = [c.text.strip() for c in row.cells]
                    rows.append(" | ".join(c for i, c in enumerate(cells) if c and (i == 0 or c != cells[i - 1])))
                body.add("\n".join(rows))
                continue
            style = (block.style.name if block.style is not None else "") or ""
            if style == "Title":
                title = title or block.text.strip()
                body.add(block.text)
            elif m := re.match(r"Heading (\d)", style):
                body.heading(int(m.group(1)), block.text)
            else:
                body.add(block.text)
    except Exception as exc:  # noqa: BLE001 - python-docx raises zip, XML and key errors for damage
        if type(exc).__name__ in ("PackageNotFoundError", "BadZipFile"):
            raise KinjectError(f"{path}: damaged Word file (incomplete zip package); open and save it again "
                               f"as .docx") from exc
        raise KinjectError(f"{path}: unreadable Word file ({error_line(exc, 200, named=True)}); "
                           f"open and save it again as .docx") from exc
    doc = body.document(f"file/{source}", title.strip() or path.stem.replace("_", " "), source)
    if not doc.text:
        raise KinjectError(f"{path}: the Word file holds no text")
    return doc


def read_plain(path: Path, source: str, markdown: bool) -> Document | None:
    """A text or markdown file as one document (None when it holds only whitespace)."""
    text = clean(read_text(path))
    if not text:
        return None
    return Document(f"file/{source}", path.stem.replace("_", " "), text, source=source,
                    marks=markdown_marks(text) if markdown else ())


# ---------------------------------------------------------------------------- files and folders


def read_file(path: Path, source: str, groups: tuple[str, ...] = (), tally: Tally | None = None) -> Iterator[Document]:
    """The documents of one file; `source` is its name relative to the folder given."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        hint = "; save it as .docx" if path.suffix.lower() == ".doc" else ""
        raise KinjectError(f"{path}: unsupported file type '{path.suffix}'; use {SUPPORTED_HELP}{hint}")
    if path.stat().st_size == 0:
        raise KinjectError(f"{path}: empty file (0 bytes)")
    if kind == "jsonl":
        for doc in read_jsonl(path):
            yield Document(doc.id, doc.title, doc.text, doc.groups or groups, source)
        return
    if kind == "mediawiki":
        for doc in read_mediawiki(path):
            yield Document(doc.id, doc.title, doc.text, groups, source)
        return
    if kind == "pdf":
        doc: Document | None = read_pdf(path, source)
        if tally is not None and doc is not None:
            tally.pages += doc.marks[-1].page if doc.marks else 0
    elif kind == "html":
        doc = read_html(path, source)
        if doc is None and tally is not None:
            tally.redirects.append(source)
    elif kind == "docx":
        doc = read_docx(path, source)
    else:
        doc = read_plain(path, source, kind == "markdown")
    if doc is not None:
        yield Document(doc.id, doc.title, doc.text, groups, doc.source, doc.marks)


def load_groups(folder: Path, files: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """`groups.yaml` of a folder: glob (relative to the folder; `*` also crosses `/`) → access
    groups. A glob that matches no file is an error: it is a typo that would publish a file."""
    import yaml

    path = folder / GROUPS_FILE
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise KinjectError(f"{path}{where}: not valid YAML ({error_line(exc)})") from exc
    if not isinstance(data, dict):
        raise KinjectError(f"{path}: expected a mapping of file globs to group lists, e.g. 'hr/*': [hr]")
    rules = []
    for pattern, groups in data.items():
        groups = [groups] if isinstance(groups, str) else groups
        if not isinstance(pattern, str) or not isinstance(groups, list) or not groups or \
                not all(isinstance(g, str) and g.strip() for g in groups):
            raise KinjectError(f"{path}: entry '{pattern}' must map a glob to a non-empty list of group names")
        glob = pattern.strip().removeprefix("./")
        glob = glob + "*" if glob.endswith("/") else glob
        if not any(fnmatch.fnmatchcase(f, glob) for f in files):
            raise KinjectError(f"{path}: '{pattern}' matches no file in {folder}; fix or remove it")
        rules.append((glob, tuple(g.strip() for g in groups)))
    return rules


_MARKUP = (".txt", ".rst", ".md", ".markdown", ".adoc", ".asciidoc")
_HTML = tuple(suffix for suffix, kind in KINDS.items() if kind == "html")
_SPHINX_MARKS = ("_sources", "objects.inv", "searchindex.js")
"""What only a Sphinx build holds beside its pages (`_static/` other generators write too)."""
_SPHINX_PAGES = {"genindex.html", "py-modindex.html", "search.html"}


def generated_pages(names: Sequence[str], renders: Callable[[str], bool] = lambda page: True) -> dict[str, str]:
    """Files of a folder that repeat or index another file rather than say something: a markup
    source beside the page rendered from it (Sphinx's `_sources/a/b.rst.txt` for `a/b.html`,
    asciidoc's `git-log.txt` beside `git-log.html`), and in a Sphinx build its generated index,
    module index, search page and highlighted source listings (`_modules/`). The rendered page is
    the document a reader sees (includes expanded, markup rendered, headings known); its source
    would add near-copies with raw markup; `renders(page)` says whether a page is one (not a redirect
    stub, whose source is then the only copy of the text). Maps each such file (relative,
    `/`-separated) to why."""
    present = set(names)
    folders = {"/".join(n.split("/")[:i]) for n in names for i in range(len(n.split("/")))}
    known = present | folders
    sphinx = {f for f in folders if any((f"{f}/{m}" if f else m) in known for m in _SPHINX_MARKS)}
    out: dict[str, str] = {}
    for name in names:
        parts, low = name.split("/"), name.lower()
        if "_sources" in parts:  # Sphinx keeps "a/b.rst" as "_sources/a/b.rst.txt"
            i = parts.index("_sources")
            rel = "/".join(parts[i + 1:])
            rel = rel[:-4] if rel.lower().endswith(".txt") else rel
            rel = next((rel[:-len(x)] for x in _MARKUP if rel.lower().endswith(x)), rel)
            page = "/".join([*parts[:i], rel]) + ".html"
            if page in present and renders(page):
                out[name] = f"the source of {page}"
                continue
        if low.endswith(_MARKUP):
            stem = name[:name.rfind(".")]
            page = next((stem + h for h in _HTML if stem + h in present), None)
            if page is not None and renders(page):
                out[name] = f"the source of {page}"
                continue
        for i in range(len(parts) - 1, -1, -1):  # the innermost Sphinx build holding the file
            if "/".join(parts[:i]) in sphinx:
                rest = parts[i:]
                if rest[0] == "_modules" and low.endswith(_HTML):
                    out[name] = "Sphinx's highlighted source listing"
                elif len(rest) == 1 and rest[0].lower() in _SPHINX_PAGES:
                    out[name] = "Sphinx's generated index or search page"
                break
    return out


def read_path(path: Path, skip_bad: bool = False, tally: Tally | None = None) -> Iterator[Document]:
    """The documents of a file or of every supported file under a folder (sorted, hidden files
    and `groups.yaml` left out). A bad file fails the read, or with `skip_bad` is counted in
    `tally.skipped`; an explicitly named file or folder must hold some text."""
    tally = tally if tally is not None else Tally()
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        names = [n for n in names if not any(part.startswith(".") for part in n.split("/")) and n != GROUPS_FILE]
        rules = load_groups(path, names)
        generated = generated_pages(names, lambda page: not redirect_stub(path / page))
        tally.generated += sorted(generated.items())
        names = [n for n in names if n not in generated]
    else:
        names, rules = [path.name], []
    found = 0
    for name in names:
        f = path / name if path.is_dir() else path
        kind = KINDS.get(f.suffix.lower())
        if kind is None and path.is_dir():
            tally.ignored[f.suffix.lower()] += 1
            continue
        groups = tuple(sorted({g for glob, gs in rules if fnmatch.fnmatchcase(name, glob) for g in gs}))
        try:
            docs = read_file(f, name if path.is_dir() else f.name, groups, tally)
            if skip_bad:
                docs = iter(list(docs))  # a file fails whole, before any of its documents is used
            for doc in docs:
                found += 1
                yield doc
        except KinjectError as exc:
            if not skip_bad:
                raise
            tally.skipped.append((name, str(exc)))
            continue
        tally.files[kind] += 1
    if not found and tally.skipped:
        raise KinjectError(tally.skipped[0][1] if not path.is_dir() else
                           f"{path}: nothing readable is left after --skip-bad ({len(tally.skipped)} bad file(s); "
                           f"first: {tally.skipped[0][1]})")
    if not found:  # a source the user named explicitly must contribute something
        what = f"folder (no readable {SUPPORTED_HELP} file)" if path.is_dir() else "file"
        raise KinjectError(f"{path}: no text in this {what}; give a source that holds documents")

