"""Documentation-site HTML: the page's own title and text, not the generator's chrome.

The pages below keep the structure the three generators write (mdBook with its hidden
"Keyboard shortcuts" help dialog, Sphinx with its sidebar and related bar, MkDocs with its navbar
brand and modals); the real exports are read by benchmarks/real_folder.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kinject.knowledge.readers import Tally, generated_pages, page_title, read_html, read_path

MDBOOK = """<!DOCTYPE html><html lang="en" class="light sidebar-visible"><head>
<title>Codegen Options - The rustc book</title></head><body>
<div id="mdbook-help-container"><div id="mdbook-help-popup"><h2 class="mdbook-help-title">Keyboard shortcuts</h2>
<p>Press <kbd>←</kbd> or <kbd>→</kbd> to navigate between chapters</p><p>Press <kbd>S</kbd> to search</p></div></div>
<nav id="sidebar" class="sidebar"><ol class="chapter"><li><a href="what-is-rustc.html">What is rustc?</a></li>
<li><a href="codegen-options/index.html" class="active">Codegen Options</a></li></ol></nav>
<div id="page-wrapper" class="page-wrapper"><div class="page">
<div id="menu-bar" class="menu-bar"><h1 class="menu-title">The rustc book</h1>
<a href="https://github.com/rust-lang/rust/edit/master/src/doc/rustc/src/codegen-options.md" title="Suggest an edit">edit</a></div>
<div id="search-wrapper" class="hidden"><form id="searchbar-outer"><input type="search" id="searchbar"></form></div>
<div id="content" class="content"><main>
<h1 id="codegen-options"><a class="header" href="#codegen-options">Codegen Options</a></h1>
<p>All of these options are passed to rustc via the -C flag, short for codegen. You can see a version of this
list for your exact compiler by running rustc -C help.</p>
<h2 id="opt-level"><a class="header" href="#opt-level">opt-level</a></h2>
<p>This flag controls the optimization level. The default is 0, and level 3 enables all optimizations.</p>
</main>
<nav class="nav-wrapper" aria-label="Page navigation"><a rel="prev" href="../command-line-arguments.html">Previous chapter</a>
<a rel="next" href="../lints/index.html">Next chapter</a></nav></div></div></div></body></html>"""

SPHINX = """<!DOCTYPE html><html><head><meta charset="utf-8" />
<title>4. More Control Flow Tools &#8212; Python 3.11.2 documentation</title></head><body>
<div class="related" role="navigation" aria-label="Related"><h3>Navigation</h3><ul><li><a href="genindex.html">index</a></li>
<li><a href="index.html">Python 3.11.2 documentation</a> &#187;</li></ul></div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper"><div class="body" role="main">
<section id="more-control-flow-tools"><h1>4. More Control Flow Tools<a class="headerlink" href="#more-control-flow-tools">¶</a></h1>
<p>Besides the while statement just introduced, Python uses the usual flow control statements known from other
languages, with some twists.</p>
<section id="if-statements"><h2>4.1. if Statements<a class="headerlink" href="#if-statements">¶</a></h2>
<p>Perhaps the most well-known statement type is the if statement. There can be zero or more elif parts, and the
else part is optional.</p></section></section></div></div></div>
<div class="sphinxsidebar" role="navigation" aria-label="main navigation"><div class="sphinxsidebarwrapper">
<h3><a href="contents.html">Table of Contents</a></h3><ul><li><a href="#">4. More Control Flow Tools</a></li></ul>
<div role="note" aria-label="source link"><h3>This Page</h3><ul><li><a href="_sources/controlflow.rst.txt">Show Source</a></li></ul></div>
<div id="searchbox" role="search"><h3>Quick search</h3><form class="search"><input type="text" name="q" /></form></div>
</div></div></div>
<div class="footer">&copy; Copyright 2001-2023, Python Software Foundation. Found a bug?</div></body></html>"""

MKDOCS = """<!DOCTYPE html><html lang="en"><head><title>Plugins - MkDocs</title></head><body>
<div class="navbar fixed-top navbar-expand-lg navbar-dark bg-primary"><div class="container">
<a class="navbar-brand" href="../index.html">MkDocs</a><ul class="nav navbar-nav"><li class="navitem"><a href="../index.html" class="nav-link">Home</a></li></ul>
<a href="#" class="nav-link" data-toggle="modal" data-target="#mkdocs_search_modal">Search</a></div></div>
<div class="container"><div class="row"><div class="col-md-3"><div class="navbar-light navbar-expand-md bs-sidebar hidden-print affix" role="complementary">
<ul class="nav flex-column"><li class="nav-item"><a href="#installing-plugins" class="nav-link">Installing Plugins</a></li></ul></div></div>
<div class="col-md-9" role="main">
<h1 id="mkdocs-plugins">MkDocs Plugins</h1><p>A Guide to installing, using and creating MkDocs Plugins</p>
<h2 id="installing-plugins">Installing Plugins</h2><p>Before a plugin can be used, it must be installed on the system.
If you are using a plugin which comes with MkDocs, then it was installed when you installed MkDocs.</p></div></div></div>
<div class="modal" id="mkdocs_keyboard_modal" tabindex="-1" role="dialog"><div class="modal-dialog"><h4 class="modal-title">Keyboard Shortcuts</h4>
<table class="table"><tr><td>Open this help</td><td class="help shortcut"><kbd>?</kbd></td></tr></table></div></div>
</body></html>"""

REDIRECT = """<!doctype html><html><head><title>Redirecting...</title>
<meta http-equiv="refresh" content="0; url=../dev-guide/themes/"></head>
<body>You're being redirected to a <a href="../dev-guide/themes/">new destination</a>.</body></html>"""


def _page(tmp_path: Path, name: str, html: str) -> Path:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path


@pytest.mark.parametrize("html, title, kept, chrome", [
    (MDBOOK, "Codegen Options", ["passed to rustc via the -C flag", "level 3 enables all optimizations"],
     ["Keyboard shortcuts", "navigate between chapters", "What is rustc?", "Previous chapter", "edit"]),
    (SPHINX, "4. More Control Flow Tools", ["usual flow control statements", "zero or more elif parts"],
     ["Quick search", "Show Source", "Table of Contents", "Copyright", "¶", "Navigation"]),
    (MKDOCS, "Plugins", ["must be installed on the system"],
     ["Keyboard Shortcuts", "Open this help", "Search", "Home"]),
])
def test_site_pages_keep_their_title_and_text_and_drop_the_chrome(tmp_path: Path, html: str, title: str,
                                                                  kept: list[str], chrome: list[str]) -> None:
    doc = read_html(_page(tmp_path, "page.html", html), "page.html")
    assert doc is not None and doc.title == title
    for text in kept:
        assert text in " ".join(doc.text.split())
    for text in chrome:
        assert text not in doc.text, text


def test_headings_form_the_section_path_without_pilcrows(tmp_path: Path) -> None:
    doc = read_html(_page(tmp_path, "controlflow.html", SPHINX), "controlflow.html")
    assert doc.marks[-1].section == "4. More Control Flow Tools › 4.1. if Statements"


@pytest.mark.parametrize("raw, heading, sites, want", [
    ("Codegen Options - The rustc book", "Codegen Options", set(), "Codegen Options"),
    ("4. More Control Flow Tools — Python 3.11.2 documentation", "", set(), "4. More Control Flow Tools"),
    ("11. Brief Tour of the Standard Library — Part II — Python 3.11.2 documentation",
     "11. Brief Tour of the Standard Library — Part II", set(), "11. Brief Tour of the Standard Library — Part II"),
    ("Plugins - MkDocs", "MkDocs Plugins", {"mkdocs"}, "Plugins"),
    ("Docs | Getting started", "Getting started", set(), "Getting started"),
    ("Redirecting...", "Themes", set(), "Themes"),
    ("", "", set(), ""),
    ("A plain title", "Something else", set(), "A plain title"),
])
def test_page_title_cuts_the_site_name(raw: str, heading: str, sites: set[str], want: str) -> None:
    assert page_title(raw, heading, sites) == want


def test_redirect_stubs_are_left_out_and_said(tmp_path: Path) -> None:
    _page(tmp_path, "old.html", REDIRECT)
    _page(tmp_path, "plugins.html", MKDOCS)
    tally = Tally()
    docs = list(read_path(tmp_path, tally=tally))
    assert [d.source for d in docs] == ["plugins.html"]
    assert tally.redirects == ["old.html"]
    assert any("1 redirect page" in line and "old.html" in line for line in tally.notes())


def test_generated_pages_are_named_and_only_real_sources_dropped() -> None:
    names = ["req/index.html", "req/user/quickstart.html", "req/_sources/user/quickstart.rst.txt",
             "req/_sources/orphan.rst.txt", "req/_static/basic.css", "req/_modules/requests/api.html",
             "req/genindex.html", "req/search.html", "req/py-modindex.html",
             "git/git-log.html", "git/git-log.txt", "git/notes.txt", "docs/README.md", "docs/search.html"]
    got = generated_pages(names)
    assert got == {"req/_sources/user/quickstart.rst.txt": "the source of req/user/quickstart.html",
                   "req/_modules/requests/api.html": "Sphinx's highlighted source listing",
                   "req/genindex.html": "Sphinx's generated index or search page",
                   "req/search.html": "Sphinx's generated index or search page",
                   "req/py-modindex.html": "Sphinx's generated index or search page",
                   "git/git-log.txt": "the source of git/git-log.html"}
    # a source with no rendered page, plain text files and a non-Sphinx site's search page are read
    assert generated_pages(["a/_sources/x.rst.txt", "notes.txt", "search.html"]) == {}
    assert generated_pages(["site/_static/app.css", "site/search.html", "site/_modules/a.html"]) == {}  # not Sphinx


def test_a_markup_source_beside_its_page_is_left_out_and_said(tmp_path: Path) -> None:
    _page(tmp_path, "plugins.html", MKDOCS)
    (tmp_path / "plugins.txt").write_text("Plugins\n=======\n\nMkDocs uses Python's Markdown library.\n")
    tally = Tally()
    docs = list(read_path(tmp_path, tally=tally))
    assert [d.source for d in docs] == ["plugins.html"]
    assert tally.generated == [("plugins.txt", "the source of plugins.html")]
    assert any("1 generated file" in line and "plugins.txt (the source of plugins.html)" in line
               for line in tally.notes())


def test_a_markup_source_is_read_when_its_page_is_a_redirect_stub(tmp_path: Path) -> None:
    _page(tmp_path, "themes.html", REDIRECT)
    (tmp_path / "themes.md").write_text("# Themes\n\nA theme is a folder of Jinja2 templates and static files.\n")
    tally = Tally()
    docs = list(read_path(tmp_path, tally=tally))
    assert [d.source for d in docs] == ["themes.md"] and tally.generated == [] and tally.redirects == ["themes.html"]


def test_preformatted_blocks_keep_their_lines_between_fences(tmp_path: Path) -> None:
    page = ("<html><head><title>AppArmor - Handbook</title></head><body><main><h1>AppArmor</h1>"
            "<p>AppArmor is functional after the installation, and aa-status will confirm it quickly:</p>"
            '<pre class="screen"><code class="computeroutput"># aa-status\napparmor module is loaded.\n'
            "15 profiles are in enforce mode.</code></pre><p>The state of each profile can be switched.</p>"
            '<p>An mdBook page nests its playground:</p><pre><pre class="playground"><code class="language-rust">'
            "fn main() {\n    let x = 5;\n}</code></pre></pre><p>It warns:</p>"
            '<pre><code class="language-bash">$ rustc lib.rs\nwarning: unused variable: `x`</code></pre>'
            "</main></body></html>")
    doc = read_html(_page(tmp_path, "apparmor.html", page), "apparmor.html")
    fences = [i for i in range(len(doc.text)) if doc.text.startswith("```", i)]
    assert len(fences) == 6, doc.text  # every block, the nested one once
    blocks = [doc.text[a:b] for a, b in zip(fences[::2], fences[1::2])]
    assert "15 profiles are in enforce mode." in blocks[0] and "let x = 5;" in blocks[1] and "unused" in blocks[2]
    assert "apparmor module is loaded.\n15 profiles" in blocks[0]  # a <pre class="screen"> keeps its lines too
    bare = "<html><body><main><h1>Ls</h1><p>Listing a folder is simple enough.</p><pre>$ ls\nfoo  bar</pre></main></body></html>"
    assert "```\n$ ls\nfoo bar\n```" in read_html(_page(tmp_path, "ls.html", bare), "ls.html").text  # lines kept
    assert "quickly:" in doc.text[:fences[0]] and "switched" in doc.text[fences[1]:fences[2]]
