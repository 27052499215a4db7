"""The experiment config: one YAML file → validated settings (pydantic), errors naming file, line and key.

It owns what a `kinject run` config may say — models, knowledge bases, tasks, methods, K values,
fine-tuning, where stages run (device, dtype, backend, launchers) — and the checks that need
only the config and the task files, so a bad config fails in one line before any stage runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from kinject.core.errors import KinjectError
from kinject.eval.methods import DISTILLED, parse_method
from kinject.runtime.catalog import DEFAULT_EMBEDDER
from kinject.runtime.hyper import Hyper


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KBConfig(_Model):
    """A knowledge base: `kinject corpus build` options."""

    sources: list[str] = Field(min_length=1)
    topics: list[str] = []
    titles: list[str] = []
    keywords: list[str] = []
    chunk_tokens: int = Field(256, ge=16)
    min_tokens: int = Field(32, ge=0)
    small: Literal["merge", "drop", "keep"] = "merge"
    tokenizer: str | None = None
    """Tokenizer that measures chunks; default: the first model (one corpus and index per KB)."""
    context_header: bool | None = None
    """Embed each chunk, and show it in the RAG prompt, under "title › heading path"; default (None):
    on where the documents have headings (the user's files), off for built-in datasets."""


def _check_k(v: list[int]) -> list[int]:
    if not v or any(x < 0 for x in v):
        raise ValueError("k must be a non-empty list of values >= 0")
    return sorted(set(v))


class TaskConfig(_Model):
    """One task of a run config: what to ask, against which knowledge base, how many shots."""
    task: str
    kb: str | None = None
    limit: int | None = Field(None, ge=1)
    """Questions per subject (lm-eval's --limit); all when unset."""
    shots: list[int] = [0]
    methods: list[str] | None = None
    """Overrides the run's methods for this task."""
    k: list[int] | None = None
    """Overrides the run's K values for this task."""

    @field_validator("k")
    @classmethod
    def _k(cls, v: list[int] | None) -> list[int] | None:
        return None if v is None else _check_k(v)

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        if not v or any(s < 0 or s > 5 for s in v):
            raise ValueError("shots must be a non-empty list of values in 0..5")
        return sorted(set(v))

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            parse_method(name)
        return v


BUILTIN_SOURCES = ("wiki-summaries", "sciq", "newfacts")


class ReplayConfig(_Model):
    """General text mixed into fine-tuning, against forgetting (methods with `+replay`)."""

    source: str
    """Any corpus source: wiki-summaries, sciq, newfacts, or a file/folder beside the config."""
    fraction: float = Field(0.2, ge=0, lt=1)
    """Share of the training tokens that are replay text."""


class RaftConfig(_Model):
    """RAFT's training examples: question + D distractor chunks (+ the oracle chunk in P of them)."""

    distractors: int = Field(3, ge=1)
    """D: chunks of the knowledge base other than the question's own (RAFT's reference script: 3)."""
    oracle_fraction: float = Field(0.8, gt=0, le=1)
    """P: share of examples that keep the oracle chunk (the RAFT paper's finding: about 0.8)."""
    per_chunk: int | None = Field(None, ge=1)
    """Pairs per chunk RAFT trains on (default: all, finetune.pairs_per_chunk); each example carries
    D + 1 chunks, so RAFT is the costliest recipe per pair."""


class DistillConfig(_Model):
    """Prompt distillation (`distill` methods; Kujanpää et al. 2024): the frozen model reading the
    chunk is the teacher, the model without it the student, trained on KL(teacher ‖ student) over
    the answer tokens of the training pairs (teacher-forced on the reference answer)."""

    temperature: float = Field(1.0, gt=0)
    """Both distributions are softened by it; the loss is scaled by its square (Hinton et al.)."""
    top_k: int = Field(32, ge=1, le=1024)
    """Teacher logits kept per answer token (the cached stage stays small); the teacher's
    distribution is renormalised over them."""
    target: Literal["reference", "teacher"] = "reference"
    """The answer both are teacher-forced on: the pair's reference answer, or the teacher's own
    greedy answer (what it says when it reads the chunk)."""
    layers: list[int] | None = None
    """`kmodule`: the hidden layers matched (1 = the first block's output); None: every block
    (Caccia et al. match all). An index beyond the model's blocks fails before any stage runs."""
    hidden_weight: float = Field(1.0, gt=0)
    """`kmodule`: the hidden-state term's weight beside the KL term."""

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("give layer indices from 1 (the first block's output), or leave it out for every layer")
        return v


PAIR_GENERATORS = ("local", "openai")


def pairs_kind(spec: str) -> Literal["cloze", "generator", "file"]:
    """What a `finetune.pairs` value names: offline cloze, a generator, or a pairs JSONL file."""
    if spec == "cloze":
        return "cloze"
    return "generator" if spec.split(":")[0] in PAIR_GENERATORS else "file"


class SampleConfig(_Model):
    """`finetune.sample`: how many chunks `train_on: sample` trains on (the evaluated questions'
    sources plus a seeded random draw of the others), by count or by share of the knowledge base."""

    size: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one(self) -> SampleConfig:
        if (self.size is None) == (self.fraction is None):
            raise ValueError("finetune.sample: give exactly one of size (chunks) or fraction (share of the chunks)")
        return self


class FinetuneConfig(Hyper):
    """The `finetune:` section: the shared hyper-parameters (`kinject.runtime.hyper.Hyper`), a learning
    rate grid, a launcher, what to train on, and the data of the recipes beyond continued
    pre-training (QA pairs for sft/raft, RAFT's distractors, replay text)."""

    lr: list[float] = [1e-5]
    """One learning rate, or several to search (lowest validation loss wins)."""
    launch: str | None = None
    """Run fine-tuning under this launcher, e.g. "accelerate launch --num_processes 4" or with
    "--config_file fsdp.yaml" (DeepSpeed/FSDP for 7B); unset: in this process."""
    train_on: Literal["kb", "sources", "sample"] = "kb"
    """kb: every chunk of the knowledge base; sources: only the chunks the run's questions come
    from (the paper's current-events setting, and a small fine-tune for a demo); sample: those
    sources plus a seeded random sample of the other chunks up to `sample` (a design that fits a
    time budget; full-corpus FT dilutes each fact further, so read its gain as an upper bound)."""
    sample: SampleConfig | None = None

    pairs: str | None = None
    """Training QA pairs for sft and raft: cloze (offline, deterministic), a generator
    (local:NAME or openai:…, the fact-based recipe), or a JSONL file from `kinject questions --pairs`."""
    pairs_per_chunk: int = Field(4, ge=1)
    """Pairs made per chunk (cloze and generator): every fact of a chunk, up to this many."""
    raft: RaftConfig = RaftConfig()
    replay: ReplayConfig | None = None
    distill: DistillConfig = DistillConfig()
    """Prompt distillation's temperature and kept teacher logits (`distill` methods)."""

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("lr must be a non-empty list of positive numbers")
        return v

    @model_validator(mode="after")
    def _sample_given(self) -> FinetuneConfig:
        if (self.train_on == "sample") != (self.sample is not None):
            raise ValueError("finetune: train_on: sample needs a `sample:` with size or fraction, and `sample:` "
                             "needs train_on: sample")
        return self

    @model_validator(mode="after")
    def _search_needs_held_out(self) -> FinetuneConfig:
        if len(self.lr) > 1 and self.val_fraction == 0:
            raise ValueError("finetune.val_fraction: a search over several lr keeps the lowest validation loss, so it needs "
                             "held-out chunks; set val_fraction above 0 (e.g. 0.05) or give one lr")
        return self


class EvalConfig(_Model):
    """How a run's eval stages run: in this process or under a launcher."""
    launch: str | None = None
    """Run eval stages under this launcher, e.g. "accelerate launch --multi_gpu --num_processes 4":
    data parallel, the questions sharded over the processes; unset: in this process."""


class ControlConfig(_Model):
    """A control task: every fine-tuned model is also scored on it closed-book (forgetting)."""

    task: str
    limit: int | None = Field(None, ge=1)
    shots: int = Field(0, ge=0, le=5)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"task": v} if isinstance(v, str) else v


class Config(_Model):
    """A run config (kinject.yaml): models, knowledge bases, tasks, methods and where it all runs."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[str] = Field(min_length=1)
    embedder: str = DEFAULT_EMBEDDER
    retriever: Literal["dense", "bm25", "hybrid"] = "dense"
    index_kind: Literal["flat", "hnsw", "ivf"] = "flat"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    """Where every stage runs: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA GPUs that have it (else fp16), fp32 on CPU and MPS."""
    backend: str = "hf"
    """Who scores: hf (in process) or openai:BASE_URL#MODEL (a /v1/completions server; base and
    rag methods only, since fine-tuned models live here)."""
    evaluation: EvalConfig = Field(EvalConfig(), alias="eval")
    batch_size: int = Field(8, ge=1)
    seeds: list[int] = [0]
    k: list[int] = [0, 1, 2, 3, 4, 5]
    methods: list[str] = ["base", "rag", "ft", "ft+rag"]
    knowledge_bases: dict[str, KBConfig] = {}
    tasks: list[TaskConfig] = Field(min_length=1)
    finetune: FinetuneConfig = FinetuneConfig()
    control: list[ControlConfig] = []
    """Tasks every fine-tuned model is also scored on closed-book, to measure forgetting
    (e.g. [sciq, mmlu:paper@cloze] or {task: sciq, limit: 200})."""
    generator: str = "local:qwen2.5-0.5b"
    """Paraphrase writer for ft-par methods (see `kinject paraphrase --help`)."""
    _base: Path = PrivateAttr(default=Path("."))
    _file: Path = PrivateAttr(default=Path("config.yaml"))
    """The config file, for errors found while planning (RAFT's distractors against the chunks)."""

    def path(self, ref: str) -> str:
        """A reference as written, or the file it names relative to the config's folder."""
        p = self._base / ref
        return str(p.resolve()) if not Path(ref).is_absolute() and p.exists() else ref

    def task_path(self, spec: str) -> str:
        """A task spec with its path resolved against the config's folder, keeping any @format."""
        base, at, fmt = spec.partition("@")
        return self.path(base) + at + fmt

    @field_validator("k")
    @classmethod
    def _k(cls, v: list[int]) -> list[int]:
        return _check_k(v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            try:
                parse_method(name)
            except ValueError as exc:
                raise ValueError(f"methods.{i}: {exc}") from None
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from kinject.lm.backends import parse_backend

        try:
            parse_backend(v)
        except KinjectError as exc:
            raise ValueError(str(exc).replace("--backend", "backend")) from None
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("seeds must list at least one seed")
        return v

    @model_validator(mode="after")
    def _links(self) -> Config:
        for i, t in enumerate(self.tasks):
            if t.kb is not None and t.kb not in self.knowledge_bases:
                known = ", ".join(self.knowledge_bases) or "none defined"
                raise ValueError(f"tasks.{i}.kb: unknown knowledge base '{t.kb}' ({known})")
            methods = [parse_method(m) for m in self.task_methods(t)]
            if t.kb is None and any(m.rag or m.ft for m in methods):
                raise ValueError(f"tasks.{i}: methods with rag or fine-tuning need a 'kb'")
            if any(m.rag for m in methods) and not any(k > 0 for k in t.k or self.k):
                raise ValueError(f"tasks.{i}: rag methods need a K above 0 (k is {t.k or self.k}); K=0 is the base")
            if self.backend != "hf" and self.evaluation.launch:
                raise ValueError(f"eval.launch: backend '{self.backend}' is not sharded over processes (the "
                                 f"server parallelises itself); remove eval.launch or use backend: hf")
            if self.backend != "hf" and any(m.ft for m in methods):
                raise ValueError(f"tasks.{i}: fine-tuned methods are scored in this process; with backend "
                                 f"'{self.backend}' list only base and rag methods (or use backend: hf)")
        self._check_recipes()
        return self

    def _check_recipes(self) -> None:
        """The data the recipes beyond continued pre-training need, and the control tasks."""
        used = [parse_method(m) for t in self.tasks for m in self.task_methods(t)]
        ft = self.finetune
        needs_pairs = sorted({m.name for m in used if m.recipe in ("sft", "raft", *DISTILLED)})
        distilled = sorted({m.name for m in used if m.recipe in DISTILLED})
        if any(m.recipe in DISTILLED and m.replay for m in used):
            raise ValueError("methods: distill and kmodule train on the teacher's answers only; +replay is not offered "
                             "with them")
        if distilled and ft.launch:
            raise ValueError(f"finetune.launch: {', '.join(distilled)} train in this process only (their cached "
                             f"teacher logits are not shipped to a launcher yet); remove finetune.launch")
        if needs_pairs and ft.pairs is None:
            raise ValueError(f"finetune.pairs: {', '.join(needs_pairs)} train on question-answer pairs; set "
                             f"finetune.pairs: cloze (offline), a generator (local:qwen2.5-0.5b or openai:...), "
                             f"or a pairs JSONL written by `kinject questions --pairs`")
        replayed = sorted({m.name for m in used if m.replay})
        if replayed and ft.replay is None:
            raise ValueError(f"finetune.replay: {', '.join(replayed)} mix general text into training; set "
                             f"finetune.replay: {{source: wiki-summaries, fraction: 0.2}}")
        if ft.replay is not None and not replayed:
            raise ValueError("finetune.replay: no method uses it; add +replay to a fine-tuned method "
                             "(e.g. ft+replay) or remove finetune.replay")
        tuned = {t.task for t in self.tasks if any(parse_method(m).ft for m in self.task_methods(t))}
        for i, c in enumerate(self.control):
            if c.task in tuned:
                raise ValueError(f"control.{i}.task: '{c.task}' is a task this run fine-tunes for; a control "
                                 f"task measures what that costs elsewhere, so name another task (e.g. sciq)")
        if self.control and not tuned:
            raise ValueError("control: no task has a fine-tuned method, so there is no forgetting to measure; "
                             "add one (e.g. ft) or remove control")

    def task_methods(self, t: TaskConfig) -> list[str]:
        """The methods a task is run with: its own, else the run's."""
        return t.methods if t.methods is not None else self.methods


def _line_of(node: yaml.Node, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the YAML node at a pydantic error location (the deepest that exists)."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_config(path: Path) -> Config:
    """Parse and validate a YAML config; errors name the file, line and key."""
    from kinject.core.fsio import read_text

    text = read_text(path)
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise KinjectError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise KinjectError(f"{path}: the config must be a YAML mapping (name:, models:, tasks:, ...)")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        inner = re.match(r"^([A-Za-z_]\w*(?:\.\w+)*): (.*)$", msg)  # a validator naming a deeper key
        if inner and (not loc or inner[1].split(".")[0] == str(loc[0])):
            loc = [int(p) if p.isdigit() else p for p in inner[1].split(".")]
            key, msg = inner[1], inner[2]
        line = _line_of(node, loc) if node is not None else None
        raise KinjectError(f"{path}:{line}: {key}: {msg}") from None
    return _resolve_paths(cfg, path, node)


def _resolve_paths(cfg: Config, path: Path, node: yaml.Node | None) -> Config:
    """Relative file paths in a config are relative to the config file; unknown models fail here."""
    from kinject.runtime.catalog import by_name

    catalog = by_name()
    cfg._base, cfg._file = path.parent, path

    def line(*loc: Any) -> int | None:
        return _line_of(node, list(loc)) if node is not None else None

    ft = cfg.finetune
    if ft.replay is not None and ft.replay.source not in BUILTIN_SOURCES and not Path(cfg.path(ft.replay.source)).exists():
        raise KinjectError(f"{path}:{line('finetune', 'replay', 'source')}: finetune.replay.source: no such source "
                           f"'{ft.replay.source}'; use {', '.join(BUILTIN_SOURCES)} or an existing file/folder")
    if ft.pairs is not None and pairs_kind(ft.pairs) == "file" and not Path(cfg.path(ft.pairs)).is_file():
        raise KinjectError(f"{path}:{line('finetune', 'pairs')}: finetune.pairs: '{ft.pairs}' is not cloze, a "
                           f"generator (local:NAME, openai:...) or an existing pairs JSONL file")
    for i, m in enumerate(cfg.models):
        if m not in catalog and not Path(cfg.path(m)).exists() and not re.match(r"^[\w.-]+/[\w.-]+$", m):
            line = _line_of(node, ["models", i]) if node is not None else None
            names = ", ".join(a.name for a in catalog.values() if a.kind == "lm")
            raise KinjectError(f"{path}:{line}: models.{i}: unknown model '{m}'; use a catalog LM ({names}), "
                               f"a local folder, or a hub id org/name")
    return cfg


def check_tasks(cfg: Config, path: Path) -> None:
    """Load every task once and check its few-shot examples, so a typo or a task without enough
    dev items fails before hours of work, with the line it is on."""
    from kinject.tasks.registry import load_task
    from kinject.tasks.task import check_shots

    node = yaml.compose(path.read_text())

    def fail(i: int, key: str, exc: KinjectError) -> KinjectError:
        line = _line_of(node, ["tasks", i, key]) if node is not None else None
        return KinjectError(f"{path}:{line}: tasks.{i}.{key}: {exc}")

    for i, t in enumerate(cfg.tasks):
        try:
            task = load_task(cfg.task_path(t.task))
        except KinjectError as exc:
            raise fail(i, "task", exc) from None
        try:
            check_shots(task, max(t.shots))
        except KinjectError as exc:
            raise fail(i, "shots", exc) from None
    if cfg.finetune.pairs is not None and pairs_kind(cfg.finetune.pairs) == "file":
        from kinject.synth.trainpairs import read_pairs

        read_pairs(Path(cfg.path(cfg.finetune.pairs)))  # a malformed line fails now, naming it
    for i, c in enumerate(cfg.control):
        where = f"{path}:{_line_of(node, ['control', i]) if node is not None else None}: control.{i}"
        try:
            check_shots(load_task(cfg.task_path(c.task)), c.shots)
        except KinjectError as exc:
            raise KinjectError(f"{where}: {exc}") from None
