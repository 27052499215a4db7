"""Build a real documentation folder nobody on the project wrote, from Debian documentation
packages and a PyPI sdist, into the asset cache (never into the repository).

    python benchmarks/realfolder_fetch.py [--out DIR] [--small]

What it holds (all pinned by version, so the folder is the same on every machine):
  sphinx/   the Python 3.11 tutorial, Sphinx HTML (Debian `python3.11-doc`)
  mdbook/   the rustc book, mdBook HTML with its print.html (Debian `rust-doc`)
  mkdocs/   MkDocs' own documentation, MkDocs HTML (Debian `mkdocs-doc`)
  pdf/      three PDF manuals: the Debian New Maintainers' Guide (`maint-guide`), the
            Debian FAQ (`debian-faq`) and the Debian Developer's Reference (`developers-reference`)
  changelog/ httpx's CHANGELOG.md (PyPI sdist `httpx==0.28.1`)
`--small` keeps the smoke-scale part: MkDocs' pages, the FAQ PDF and the changelog (no rust-doc,
whose package is 17 MB). Packages come with `apt-get download` (no root, nothing installed) and
`pip download --no-deps --no-binary :all:`; a machine without apt-get gets a one-line error.

`--second` builds another folder (realfolder-2/), one the reading and question rules were not
written on, to check that they carry over; it is copied as a user would export it, generated
files included (Sphinx's `_sources/`, `_modules/`, genindex and search pages; asciidoc's `.txt`
sources beside their pages):
  requests/  the Requests documentation, Sphinx HTML (Debian `python-requests-doc`)
  git/       ten git manual pages and the Git User Manual, asciidoc HTML with their .txt sources
  sqlite/    SQLite's release logs 3.35-3.40 and five of its documents (`sqlite3-doc`)
  handbook/  ten pages of the Debian Administrator's Handbook, publican HTML (`debian-handbook`)
  pdf/       the Debian Reference (`debian-reference-en`, 261 pages) and SQLite's licence page
  changelog/ black's CHANGES.md (PyPI sdist `black==24.10.0`)
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEBS = {  # package: what to take from it → where in the folder (a `*` in a name takes every match)
    "python3.11-doc": [("usr/share/doc/python3.11/html/tutorial", "sphinx/tutorial")],
    "rust-doc": [("usr/share/doc/rust-doc/html/rustc", "mdbook/rustc")],
    "mkdocs-doc": [("usr/share/doc/mkdocs/html", "mkdocs")],
    "maint-guide": [("usr/share/doc/maint-guide/maint-guide.en.pdf", "pdf/maint-guide.en.pdf")],
    "debian-faq": [("usr/share/doc/debian/FAQ/debian-faq.en.pdf.gz", "pdf/debian-faq.en.pdf")],
    "developers-reference": [("usr/share/developers-reference/developers-reference.pdf",
                              "pdf/developers-reference.pdf")],
}
SMALL = ("mkdocs-doc", "debian-faq")
SDIST = ("httpx==0.28.1", "CHANGELOG.md", "changelog/httpx-CHANGELOG.md")
KEEP = (".html", ".pdf", ".md")  # files a reader takes; the sites' js/css/fonts are left behind
SKIP_NAMES = {"404.html", "search.html", "genindex.html"}

_GIT = ("user-manual", "gittutorial", "gittutorial-2", "giteveryday", "gitglossary", "gitworkflows", "git-rebase",
        "git-commit", "git-bisect", "git-stash")
_HANDBOOK = ("sect.apt-get", "sect.apt-cache", "sect.dhcp", "sect.backup", "sect.apparmor", "apt", "packaging-system",
             "basic-configuration", "installation", "sect.creating-accounts")
SQLITE = "usr/share/doc/sqlite3"
DEBS_2 = {
    "python-requests-doc": [("usr/share/doc/python-requests-doc/html", "requests")],
    "git-doc": [(f"usr/share/doc/git-doc/{name}{ext}", f"git/{name}{ext}") for name in _GIT for ext in (".html", ".txt")],
    "sqlite3-doc": [*[(f"{SQLITE}/releaselog/3_{v}_*.html", "sqlite/") for v in range(35, 41)],
                    *[(f"{SQLITE}/{page}.html", f"sqlite/{page}.html")
                      for page in ("lang_select", "datatype3", "whentouse", "lockingv3", "wal")],
                    (f"{SQLITE}/copyright-release.pdf", "pdf/copyright-release.pdf")],
    "debian-handbook": [(f"usr/share/doc/debian-handbook/html/en-US/{page}.html", f"handbook/{page}.html")
                        for page in _HANDBOOK],
    "debian-reference-en": [("usr/share/debian-reference/debian-reference.en.pdf", "pdf/debian-reference.en.pdf")],
}
SDIST_2 = ("black==24.10.0", "CHANGES.md", "changelog/black-CHANGES.md")
KEEP_2 = (".html", ".pdf", ".md", ".txt")


def cache_root() -> Path:
    return Path(os.environ.get("KINJECT_HOME") or Path.home() / ".cache" / "kinject").expanduser()


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        hint = "; run `apt-get update` first" if cmd[0] == "apt-get" else ""
        sys.exit(f"error: {' '.join(cmd[:3])} failed: {last}{hint}")


def _copy(src: Path, dst: Path, second: bool = False) -> None:
    if "*" in src.name:  # every match, into the folder `dst`
        for f in sorted(src.parent.glob(src.name)):
            _copy(f, dst / f.name, second)
        return
    if src.is_dir():
        for f in sorted(src.rglob("*")):
            if second and f.is_file() and f.suffix in KEEP_2:
                _copy(f, dst / f.relative_to(src), second)
            elif f.is_file() and f.suffix in KEEP and f.name not in SKIP_NAMES and "/search/" not in str(f):
                _copy(f, dst / f.relative_to(src))
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".gz":
        with gzip.open(src) as fin, dst.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
    else:
        shutil.copyfile(src, dst)


def fetch(out: Path, small: bool = False, second: bool = False) -> Path:
    """The folder (with `second`, the other one), built once (atomically: a temporary folder
    renamed into place)."""
    if (out / ".complete").exists():
        return out
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        sys.exit("error: the real folder comes from Debian packages and this machine has no apt-get/dpkg-deb; "
                 "pass --folder with a folder of your own documents")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work, folder = Path(tmp) / "work", Path(tmp) / "folder"
        work.mkdir()
        for pkg, takes in (DEBS_2 if second else DEBS).items():
            if small and pkg not in SMALL:
                continue
            _run(["apt-get", "download", pkg], work)
            deb = next(work.glob(f"{pkg}_*.deb"))
            _run(["dpkg-deb", "-x", str(deb), str(work / pkg)], work)
            for src, dst in takes:
                _copy(work / pkg / src, folder / dst, second)
        spec, member, dst = SDIST_2 if second else SDIST
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", spec,
              "-d", str(work)], work)
        sdist = next(work.glob(spec.split("==")[0] + "-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            name = next(n for n in tar.getnames() if n.endswith("/" + member))
            (folder / dst).parent.mkdir(parents=True, exist_ok=True)
            (folder / dst).write_bytes(tar.extractfile(name).read())
        (folder / ".complete").write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        folder.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="where (default: the asset cache's realfolder/)")
    ap.add_argument("--small", action="store_true", help="the smoke-scale folder")
    ap.add_argument("--second", action="store_true", help="the second folder, one the rules were not written on")
    args = ap.parse_args()
    out = args.out or cache_root() / ("realfolder-2" if args.second else
                                      "realfolder-small" if args.small else "realfolder")
    folder = fetch(out, args.small and not args.second, args.second)
    files = [f for f in folder.rglob("*") if f.is_file() and f.name != ".complete"]
    print(f"{folder}: {len(files)} files")


if __name__ == "__main__":
    main()
