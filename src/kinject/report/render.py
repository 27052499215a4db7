"""The report's document model and its two renderings. A report is a list of blocks (`Heading`,
`Para`, `Table` of `Cell`s, `Image`); `to_markdown` writes them as GitHub Markdown and `to_html`
as one self-contained page (CSS in the head, images inlined as base64 PNG, no network). The
number formats every part of the report shares (p-values, signed differences) live here too.
Nothing in this module knows about runs or statistics.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def fmt_p(p: float) -> str:
    """'p<0.001', 'p=0.004', 'p=0.21'."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def fmt_delta(x: float) -> str:
    """A signed difference with a true minus sign: '+0.267', '−0.250'."""
    return f"{x:+.3f}".replace("-", "−")


def fmt_num(x: float | None, digits: int) -> str:
    """`x` to `digits` decimals; '' when missing."""
    return "" if x is None else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Cell:
    """A table cell: main text, a muted part (a CI), a tag (the chosen K), a tone (good/bad)."""

    text: str
    muted: str = ""
    tag: str = ""
    tone: str = ""
    num: bool = True
    below: bool = True   # HTML: the muted part on its own line (keeps wide tables narrow)


@dataclass
class Table:
    """A report table: headers and rows of cells."""
    headers: list[str]
    rows: list[list[Cell | str]]


@dataclass(frozen=True)
class Heading:
    """A report heading at a markdown level."""
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    """A report paragraph, plain or styled as a note, recommendation or small print."""
    text: str            # **bold** is the only inline markup
    kind: str = ""       # "" | note | rec | small


@dataclass(frozen=True)
class Image:
    """A report image: its file and alt text."""
    file: str
    alt: str


Block = Heading | Para | Table | Image


def _md_cell(c: Cell | str) -> str:
    s = c if isinstance(c, str) else " ".join(x for x in (c.text, c.muted, c.tag) if x)
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The report's blocks as markdown."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(f"*{b.text}*" if b.kind == "note" else f"> {b.text}" if b.kind == "rec" else b.text)
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.file})")
        else:
            num = [all(isinstance(r[i], Cell) and r[i].num for r in b.rows) if b.rows else False
                   for i in range(len(b.headers))]
            lines = ["| " + " | ".join(b.headers) + " |",
                     "|" + "|".join("---:" if n else "---" for n in num) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


CSS = """
:root{color-scheme:light}
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif;
 font-size:15px;line-height:1.55;color:#1f2328;background:#fff;max-width:1120px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.75rem;margin:0 0 .4rem;padding-bottom:.35rem;border-bottom:2px solid #d0d7de}
h2{font-size:1.3rem;margin:2.2rem 0 .6rem;padding-bottom:.25rem;border-bottom:1px solid #d8dee4}
h3{font-size:1.05rem;margin:1.5rem 0 .4rem}
p{margin:.5rem 0}
.scroll{overflow-x:auto;margin:.6rem 0 1.1rem}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.32rem .6rem;vertical-align:top}
th{background:#f3f5f7;text-align:left;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;white-space:nowrap}
.muted{color:#6e7781;font-size:.82em}
td .muted.ci{display:block;line-height:1.25}
.tag{color:#0550ae;font-size:.86em;font-weight:600}
.good{color:#116329;font-weight:600}
.bad{color:#a40e26;font-weight:600}
.note{color:#57606a;font-style:italic}
.small{color:#57606a;font-size:.86rem}
.rec{background:#f6f8fa;border-left:4px solid #0969da;padding:.55rem .9rem;margin:.55rem 0;border-radius:0 4px 4px 0}
figure{margin:.8rem 0 1.2rem}
img{max-width:100%;height:auto;border:1px solid #e1e4e8;border-radius:4px}
"""


def _html_cell(c: Cell | str) -> str:
    if isinstance(c, str):
        return f"<td>{html.escape(c)}</td>"
    inner = html.escape(c.text)
    if c.tone:
        inner = f'<span class="{c.tone}">{inner}</span>'
    if c.tag:
        inner += f' <span class="tag">{html.escape(c.tag)}</span>'
    if c.muted:
        inner += f' <span class="muted{" ci" if c.below else ""}">{html.escape(c.muted)}</span>'
    return f'<td class="num">{inner}</td>' if c.num else f"<td>{inner}</td>"


def to_html(blocks: Sequence[Block], title: str, folder: Path) -> str:
    """A self-contained page: CSS in the head, every image inlined as a base64 PNG."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            body.append(f"<p{cls}>{_inline(b.text)}</p>")
        elif isinstance(b, Image):
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.alt)}"></figure>')
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(_html_cell(c) for c in r) + "</tr>" for r in b.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")

