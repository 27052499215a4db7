"""Render a kinject report page in headless Chromium and save a screenshot, to check it reads well.

    python benchmarks/report_screenshot.py RUN_DIR            # writes RUN_DIR/report first
    python benchmarks/report_screenshot.py REPORT_DIR_or_report.html [--out page.png]
                                           [--width 1280] [--height 3600]

The page is self-contained (inline CSS, base64 images), so Chromium opens it from disk with no
network. Chromium's CLI screenshots the window only: raise --height to see more of a long report.
Needs a `chromium` (or chromium-browser / google-chrome) binary on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"no {' / '.join(BROWSERS)} on PATH; install one (Debian: apt-get install chromium)")


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3600, timeout: float = 120) -> Path:
    """Screenshot `page` (an HTML file) at width × height CSS pixels (device scale 1) into `png`."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state from other runs
        cmd = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
               Path(page).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="a run dir (has results.sqlite), a report dir, or a report.html")
    ap.add_argument("--out", type=Path, help="PNG to write (default: next to report.html, screenshot.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=3600)
    args = ap.parse_args()
    target: Path = args.target
    if (target / "results.sqlite").is_file():
        from kinject.report.build import write_report

        t0 = time.perf_counter()
        target = write_report(target)
        print(f"report written in {time.perf_counter() - t0:.1f}s: {target}")
    page = target / "report.html" if target.is_dir() else target
    if not page.is_file():
        sys.exit(f"{page}: no report.html here; give a run dir, a report dir or an HTML file")
    png = args.out or page.parent / "screenshot.png"
    t0 = time.perf_counter()
    screenshot(page, png, args.width, args.height)
    from matplotlib.image import imread

    img = imread(png)
    rows_with_ink = float((img[..., :3] < 0.6).any(axis=(1, 2)).mean())
    print(f"screenshot {img.shape[1]}x{img.shape[0]} in {time.perf_counter() - t0:.1f}s: {png} "
          f"({rows_with_ink:.0%} of pixel rows have content)")


if __name__ == "__main__":
    main()
