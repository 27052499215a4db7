"""`kinject run CONFIG`: one YAML config → the paper's grid as a graph of cached stages.

corpus → index → (paraphrase →) finetune → eval → results store → report.

Every stage's output lives under `<cache>/<kind>/<hash of its inputs>`, written atomically,
so a rerun recomputes nothing, a killed run resumes at the first unfinished stage (fine-tuning
resumes from its own checkpoints), and two configs that share a stage share its output. The
run directory holds only what is cheap to rebuild from the cache: the results SQLite file,
the config, and the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from rich.console import Console

from kinject import __version__
from kinject.costs import Work, processes
from kinject.devices import Placement, resolve
from kinject.errors import KinjectError
from kinject.fsio import owned
from kinject.methods import parse_method
from kinject.results import Condition, LossPoint, Row, Stage, Store, Training, samples_file
from kinject.tasks import headline_metric

STAGE_VERSION = 1
"""Bump when a stage's output format or semantics change: old cache entries are then ignored."""

# ---------------------------------------------------------------------------- config


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


def _check_k(v: list[int]) -> list[int]:
    if not v or any(x < 0 for x in v):
        raise ValueError("k must be a non-empty list of values >= 0")
    return sorted(set(v))


class TaskConfig(_Model):
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


class FinetuneConfig(_Model):
    lr: list[float] = [1e-5]
    """One learning rate, or several to search (lowest validation loss wins)."""
    epochs: int = Field(5, ge=1)
    block_size: int = Field(256, ge=8)
    batch: int = Field(64, ge=1)
    micro_batch: int = Field(4, ge=1)
    bf16: bool = False
    gradient_checkpointing: bool = False
    val_fraction: float = Field(0.05, ge=0, lt=1)
    save_every: int = Field(50, ge=1)
    launch: str | None = None
    """Run fine-tuning under this launcher, e.g. "accelerate launch --num_processes 4" or with
    "--config_file fsdp.yaml" (DeepSpeed/FSDP for 7B); unset: in this process."""
    train_on: Literal["kb", "sources"] = "kb"
    """kb: every chunk of the knowledge base; sources: only the chunks the run's questions come
    from (the paper's current-events setting, and a small fine-tune for a demo)."""

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("lr must be a non-empty list of positive numbers")
        return v


class EvalConfig(_Model):
    launch: str | None = None
    """Run eval stages under this launcher, e.g. "accelerate launch --multi_gpu --num_processes 4":
    data parallel, the questions sharded over the processes; unset: in this process."""


class Config(_Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[str] = Field(min_length=1)
    embedder: str = "minilm-l6"
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
    generator: str = "local:qwen2.5-0.5b"
    """Paraphrase writer for ft-par methods (see `kinject paraphrase --help`)."""
    _base: Path = PrivateAttr(default=Path("."))

    def path(self, ref: str) -> str:
        """A reference as written, or the file it names relative to the config's folder."""
        p = self._base / ref
        return str(p.resolve()) if not Path(ref).is_absolute() and p.exists() else ref

    def task_path(self, spec: str) -> str:
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
        from kinject.backends import parse_backend

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
        return self

    def task_methods(self, t: TaskConfig) -> list[str]:
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
    from kinject.fsio import read_text

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
    from kinject.catalog import by_name

    catalog = by_name()
    cfg._base = path.parent
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
    from kinject.registry import load_task
    from kinject.tasks import check_shots

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


# ---------------------------------------------------------------------------- stages


def fingerprint(ref: str) -> str | list:
    """What a reference's content is, for cache keys: a local file's sha256 (size and mtime beyond
    256 MB), a folder's files with sizes and mtimes; names that are not paths stand for themselves
    (catalog assets are pinned by digest, hub ids by the hub)."""
    path = Path(ref.split("@")[0])
    if path.is_file():
        st = path.stat()
        if st.st_size > 256 * 2**20:
            return [str(path), st.st_size, st.st_mtime_ns]
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [[p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return ref


def stage_key(kind: str, inputs: dict) -> str:
    blob = json.dumps({"kind": kind, "v": STAGE_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Step:
    """One node of the plan: a stage with a content-hash key, its output folder and how to build it."""

    kind: str
    label: str
    key: str
    out: Path
    build: Callable[[], None]
    done: Callable[[], bool]
    estimate_s: float = 0.0
    deps: list[Step] = field(default_factory=list)
    status: str = "pending"
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    work: Work | None = None
    """What it computes, for the cost model (None: no model runs, e.g. chunking)."""
    device: str | None = None
    """Where it runs: "cpu · fp32 · hf", "cuda:0 · bf16 · accelerate launch ..."."""
    peak_gpu_mb: float | None = None


class _PeakRSS:
    """Peak resident memory of this process while a stage runs (sampled; RSS is what users pay)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


class _GpuPeak:
    """Peak GPU memory torch allocated in this process while a stage runs; None off CUDA and for
    stages run under a launcher (their memory is in other processes)."""

    def __init__(self, placement: Placement, launched: bool) -> None:
        self.placement, self.peak_mb = placement, None
        self.active = placement.kind == "cuda" and not launched

    def __enter__(self) -> _GpuPeak:
        if self.active:
            import torch

            torch.cuda.reset_peak_memory_stats(self.placement.torch_device)
        return self

    def __exit__(self, *exc: object) -> None:
        from kinject.devices import peak_gpu_mb

        self.peak_mb = peak_gpu_mb(self.placement) if self.active else None


@dataclass
class EvalPlan:
    """One eval stage and the conditions it yields."""

    step: Step
    model: str
    task: TaskConfig
    shots: int
    method_names: dict[int, str]
    """K → method name recorded for that K (e.g. 0 → 'ft', 3 → 'ft+rag')."""
    paraphrases: int
    seed: int
    train: Step | None
    kb_steps: list[Step]


@dataclass
class Plan:
    cfg: Config
    steps: list[Step]
    evals: list[EvalPlan]
    trainings: dict[str, tuple[Step, dict]]
    placement: Placement
    present: bool
    """False when planning (dry run) for a device this machine does not have."""


def plan_placement(cfg: Config, config_path: Path, dry_run: bool) -> tuple[Placement, bool]:
    """The config's device and dtype resolved on this machine. A device it lacks fails the run
    before any stage (one line); a dry run plans for it anyway, with nominal throughput."""
    def check(device: str, dtype: str, key: str) -> Placement:
        try:
            return resolve(device, dtype)
        except KinjectError as exc:
            raise KinjectError(f"{config_path}: {key}: {exc}") from None

    try:
        placement = check(cfg.device, cfg.dtype, "device")
        if cfg.finetune.bf16 and any(parse_method(m).ft for t in cfg.tasks for m in cfg.task_methods(t)):
            check(cfg.device, "bf16", "finetune.bf16")
        return placement, True
    except KinjectError:
        if not dry_run:
            raise
    device = "cuda:0" if cfg.device in ("auto", "cuda") else cfg.device
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    return Placement(device, dtype, "not on this machine"), False  # type: ignore[arg-type]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-48:].strip("_") or "x"


def _short(ref: str) -> str:
    """A readable label part for a model or task reference (a path's last component)."""
    return _slug(ref.rsplit("/", 1)[-1] if "/" in ref and Path(ref.split("@")[0]).exists() else ref)


def plan(cfg: Config, cache: Path, console: Console, placed: tuple[Placement, bool] | None = None) -> Plan:
    """The stage graph for a config (nothing runs here but cheap reads of cached outputs)."""
    from kinject.registry import load_task

    placement, present = placed or (resolve(cfg.device, cfg.dtype), True)
    where = f"{placement.device} · {placement.dtype}"
    # under a launcher each process takes its own device of the kind
    eval_where = f"{placement.kind if cfg.evaluation.launch else placement.device} · {placement.dtype} · " \
                 f"{cfg.backend.split('#')[0]}" + _launcher_tag(cfg.evaluation.launch)
    ft_where = f"{placement.kind if cfg.finetune.launch else placement.device} · " \
               f"{'bf16' if cfg.finetune.bf16 else 'fp32'}" + _launcher_tag(cfg.finetune.launch)
    # the numbers depend on the kind of device and the dtype, not on which GPU of a kind
    placed_key = {"device": placement.kind, "dtype": placement.dtype}

    steps: list[Step] = []
    by_key: dict[str, Step] = {}

    def add(kind: str, label: str, inputs: dict, build: Callable[[Path], None], done_file: str | None,
            estimate: float, deps: Sequence[Step] = ()) -> Step:
        key = stage_key(kind, inputs)
        if key in by_key:
            return by_key[key]
        out = cache / kind / key
        step = Step(kind, label, key, out, lambda: build(out),
                    (lambda: (out / done_file).is_file()) if done_file else out.is_dir, estimate, list(deps))
        by_key[key] = step
        steps.append(step)
        return step

    # knowledge bases: corpus (+ index) once each
    corpus_steps: dict[str, Step] = {}
    index_steps: dict[str, Step] = {}
    emb = cfg.path(cfg.embedder)  # a catalog name, a hub id, or a folder beside the config
    emb_content = fingerprint(emb)  # a local folder: its files are part of the index key
    for name, kb in cfg.knowledge_bases.items():
        if not any(t.kb == name for t in cfg.tasks):
            continue
        tok = cfg.path(kb.tokenizer or cfg.models[0])
        sources = [cfg.path(s) for s in kb.sources]
        inputs = {"kb": {**kb.model_dump(exclude={"tokenizer"}), "sources": sources}, "tokenizer": tok,
                  "content": [fingerprint(s) for s in sources] + [fingerprint(tok)]}
        corpus_steps[name] = c = add("corpus", name, inputs,
                                     lambda out, kb=kb, tok=tok, src=sources: _build_corpus(kb, src, tok, out),
                                     "meta.json", 20)
        if any(parse_method(m).rag for t in cfg.tasks if t.kb == name for m in cfg.task_methods(t)):
            ix_inputs = {"corpus": c.key, "embedder": emb, "kind": cfg.index_kind, **placed_key,
                         **({"embedder_content": emb_content} if emb_content != emb else {})}
            index_steps[name] = ix = add("index", f"{name}-{_short(cfg.embedder)}", ix_inputs,
                                         lambda out, c=c: _build_index(c.out, emb, cfg.index_kind, placement, out),
                                         "meta.json", 60, [c])
            n_chunks, per_chunk, exact = _chunk_count(c, kb)
            ix.work, ix.device = Work("embed", emb, n_chunks * per_chunk, exact=exact), where

    # questions per task (cheap: loaded to know which chunks are sources, and for estimates)
    items = {}
    tasks = {}
    for t in cfg.tasks:
        from kinject.tasks import select

        tasks[t.task] = load_task(cfg.task_path(t.task))
        items[t.task, t.limit] = select(tasks[t.task], t.limit)

    trainings: dict[str, tuple[Step, dict]] = {}
    evals: list[EvalPlan] = []
    ft = cfg.finetune
    for model in cfg.models:
        for t in cfg.tasks:
            methods = [parse_method(m) for m in cfg.task_methods(t)]
            qs = items[t.task, t.limit]
            # group methods by model variant: (ft kind, paraphrases) → {k: method name}
            variants: dict[tuple[str | None, int], dict[int, str]] = {}
            for m in methods:
                ks = [k for k in (t.k or cfg.k) if k > 0] if m.rag else [0]
                for k in ks:
                    variants.setdefault((m.ft, m.paraphrases), {})[k] = m.name
            for (ft_kind, n_par), names in variants.items():
                seeds = cfg.seeds if ft_kind else [0]
                for seed in seeds:
                    train_step = None
                    if ft_kind:
                        assert t.kb is not None
                        c = corpus_steps[t.kb]
                        sources = sorted({s for q in _kb_questions(cfg, t.kb, items) for s in q.source_chunks}) \
                            if ft.train_on == "sources" else []
                        par_step = None
                        if n_par:
                            local = cfg.generator.startswith("local")
                            par_step = add("paraphrase", f"{t.kb}-x{n_par}",
                                           {"corpus": c.key, "sources": sources, "generator": cfg.generator,
                                            "n": n_par, "seed": seed, **(placed_key if local else {})},
                                           lambda out, c=c, s=sources, n=n_par, sd=seed:
                                           _paraphrase(c.out, s, cfg.generator, n, sd, placement, cache, out,
                                                       console),
                                           "paraphrases.parquet", 30.0 * n_par * max(1, len(sources) or 50), [c])
                            par_step.device = where if local else cfg.generator.split("#")[0]
                        tr_inputs = {"model": cfg.path(model), "model_content": fingerprint(cfg.path(model)), "corpus": c.key, "sources": sources,
                                     "paraphrases": par_step.key if par_step else None,
                                     "method": ft_kind, "seed": seed, "device": placement.kind,
                                     "ft": ft.model_dump(exclude={"train_on", "save_every", "launch"})}
                        deps = [c] + ([par_step] if par_step else [])
                        train_step = add("finetune", f"{_short(model)}-{t.kb}-{ft_kind}-p{n_par}-s{seed}", tr_inputs,
                                         lambda out, c=c, s=sources, p=par_step, fk=ft_kind, sd=seed, m=cfg.path(model):
                                         _finetune(m, c.out, s, p.out if p else None, fk, sd, ft, placement, out,
                                                   console),
                                         "summary.json", 1.3 * ft.epochs * max(1, len(sources) or 100), deps)
                        n_chunks, per_chunk, exact = _chunk_count(c, cfg.knowledge_bases[t.kb])
                        n_chunks = len(sources) or n_chunks
                        train_tokens = n_chunks * (1 + n_par) * per_chunk
                        train_step.work = Work("train", cfg.path(model), train_tokens * ft.epochs * len(ft.lr),
                                               processes(ft.launch), ft.launch or "", exact)
                        train_step.device = ft_where
                        trainings[train_step.key] = (train_step, {"model": model, "kb": t.kb, "method": ft_kind,
                                                                  "paraphrases": n_par, "seed": seed})
                    rag_ks = sorted(k for k in names if k > 0)
                    idx = index_steps.get(t.kb) if rag_ks and t.kb else None
                    ks = sorted(set(names) | ({0} if rag_ks else set()))
                    for shots in t.shots:
                        label = f"{_short(model)}-{_short(t.task)}-{ft_kind or 'base'}-p{n_par}-s{seed}-{shots}shot"
                        model_in = train_step.key if train_step else cfg.path(model)
                        ev_inputs = {"model": model_in, "model_content": fingerprint(model_in),
                                     "task": cfg.task_path(t.task), "task_content": fingerprint(cfg.task_path(t.task)), "limit": t.limit, "shots": shots,
                                     "index": idx.key if idx else None, "ks": ks if idx else [0],
                                     "retriever": cfg.retriever, "backend": cfg.backend, **placed_key}
                        deps = ([train_step] if train_step else []) + ([idx] if idx else [])
                        # 0.15 s per question on 2 cores at K=0; each retrieved chunk adds 1.5x that
                        work = len(qs) * sum(1 + 1.5 * k for k in (ks if idx else [0]))
                        ev = add("eval", label, ev_inputs,
                                 lambda out, ts=train_step, m=cfg.path(model), tk=cfg.task_path(t.task), lim=t.limit, sh=shots, ix=idx,
                                 kk=(ks if idx else [0]):
                                 _eval(str(ts.out / "model") if ts else m, tk, lim, sh, ix.out if ix else None, kk,
                                       cfg, out, console),
                                 "results.json", 0.15 * work * (1 + shots), deps)
                        chunk = _chunk_count(corpus_steps[t.kb], cfg.knowledge_bases[t.kb])[1] if idx and t.kb else 0
                        ev.work = Work("score", cfg.path(model), sum(
                            _prompt_tokens(tasks[t.task], qs, shots) + len(qs) * k * chunk for k in (ks if idx else [0])),
                            processes(cfg.evaluation.launch), cfg.evaluation.launch or "")
                        ev.device = eval_where
                        evals.append(EvalPlan(ev, model, t, shots, names, n_par, seed, train_step,
                                              [x for x in (corpus_steps.get(t.kb or ""), idx) if x]))
    return Plan(cfg, steps, evals, trainings, placement, present)


def _launcher_tag(launch: str | None) -> str:
    """" · accelerate ×4" for a launcher line, "" without one."""
    return f" · {Path(launch.split()[0]).name} ×{processes(launch)}" if launch else ""


def _prompt_tokens(task, items: list, shots: int) -> float:
    """Tokens a task's prompts forward (about 4 characters a token): context plus every option."""
    from kinject.tasks import render

    chars = 0
    for it in items:
        p = render(task, it, shots)
        chars += len(p.context) + sum(len(c) for c in p.continuations)
    return chars / 4


def _chunk_count(corpus: Step, kb: KBConfig) -> tuple[int, float, bool]:
    """(chunks, mean tokens per chunk, exact?) of a knowledge base: read once its corpus stage is
    cached, else a guess (1,000 chunks a source, 80% full)."""
    if (corpus.out / "meta.json").is_file():
        try:
            import pyarrow.parquet as pq

            sizes = pq.read_table(corpus.out / "chunks.parquet", columns=["n_tokens"]).column("n_tokens").to_pylist()
            return len(sizes), sum(sizes) / max(1, len(sizes)), True
        except Exception:  # noqa: BLE001 - a damaged cache entry only makes the estimate a guess
            pass
    return 1000 * len(kb.sources), 0.8 * kb.chunk_tokens, False


def _kb_questions(cfg: Config, kb: str, items: dict) -> list:
    return [q for t in cfg.tasks if t.kb == kb for q in items[t.task, t.limit]]


# ---------------------------------------------------------------------------- stage builders


def _build_corpus(kb: KBConfig, sources: Sequence[str], tokenizer: str, out: Path) -> None:
    from kinject.corpus import build_corpus
    from kinject.registry import read_source
    from kinject.models import load_tokenizer

    tok, context = load_tokenizer(tokenizer)
    docs = (d for s in sources for d in read_source(s, kb.topics, kb.titles, kb.keywords))
    build_corpus(docs, tok, out, max_tokens=kb.chunk_tokens, min_tokens=kb.min_tokens, small=kb.small,
                 tokenizer_ref=tokenizer, context_limit=context)


def _build_index(corpus: Path, embedder: str, kind: str, placement: Placement, out: Path) -> None:
    from kinject.retrieval import Embedder, build_index

    build_index(corpus, Embedder(embedder, placement=placement), out, kind)  # type: ignore[arg-type]


def _select_chunks(corpus: Path, sources: Sequence[str]) -> list:
    from kinject.corpus import read_chunks

    chunks = read_chunks(corpus)
    if not sources:
        return chunks
    wanted = set(sources)
    picked = [c for c in chunks if c.id in wanted or c.doc_id in wanted]
    if not picked:
        raise KinjectError(f"{corpus}: none of the questions' source chunks is in this knowledge base; "
                           f"use finetune.train_on: kb")
    return picked


def _paraphrase(corpus: Path, sources: Sequence[str], generator: str, n: int, seed: int, placement: Placement,
                cache: Path, out: Path, console: Console) -> None:
    from kinject.console import BarRow, progress_bar
    from kinject.generators import open_generator
    from kinject.paraphrase import paraphrase_corpus, write_paraphrase_dir

    chunks = _select_chunks(corpus, sources)
    gen = open_generator(generator, device=placement.device, dtype=placement.dtype)
    try:
        with progress_bar(console, "rounds") as bar:
            row = BarRow(bar, f"paraphrasing ×{n}")
            paraphrases, report = paraphrase_corpus(
                chunks, gen, n, cache / "paraphrase-cache.sqlite", seed=seed, progress=row.advance, total=row.total)
    finally:
        gen.close()
    if report.unfinished:  # never cache a stage the generator did not finish; finished rounds are cached
        raise KinjectError(f"{report.unfinished} paraphrase rounds got no reply from '{generator}' "
                           f"(endpoint errors: {report.generator_stats}); rerun to ask for those again")
    write_paraphrase_dir(out, paraphrases, report, {"generator": generator, "n": n, "seed": seed,
                                                    "corpus": str(corpus), "kinject_version": __version__})


def _finetune(model: str, corpus: Path, sources: Sequence[str], paraphrases: Path | None, method: str, seed: int,
              ft: FinetuneConfig, placement: Placement, out: Path, console: Console) -> None:
    from kinject.console import BarRow, progress_bar
    from kinject.finetune import TrainConfig, search_lr

    texts = [c.text for c in _select_chunks(corpus, sources)]
    if paraphrases is not None:
        import pyarrow.parquet as pq

        texts += [t for t in pq.read_table(paraphrases / "paraphrases.parquet").column("text").to_pylist() if t]
    cfg = TrainConfig(epochs=ft.epochs, block_size=ft.block_size, micro_batch=ft.micro_batch,
                      effective_batch=max(ft.batch, ft.micro_batch), method=method,  # type: ignore[arg-type]
                      bf16=ft.bf16, gradient_checkpointing=ft.gradient_checkpointing, seed=seed,
                      device=placement.device,
                      save_every=ft.save_every, val_fraction=ft.val_fraction if len(ft.lr) == 1 else
                      max(ft.val_fraction, 0.05))
    if ft.launch:
        from kinject.finetune import write_job

        job = out.parent / f"{out.name}.job.json"
        write_job(job, model, texts, cfg, ft.lr)
        _launch(ft.launch, ["kinject.finetune", str(job), str(out)], "fine-tuning", console,
                "rerun to resume from the last checkpoint")
        return
    with progress_bar(console, "steps") as bar:
        search_lr(model, texts, out, cfg, ft.lr, resume=out.exists(),
                  log=lambda m: console.print(f"[dim]·[/dim] {m}", highlight=False),
                  progress=BarRow(bar, f"fine-tuning ({method})").update)


def _launch(launcher: str, module_args: list[str], what: str, console: Console, hint: str) -> None:
    """Run `python -m <module_args>` under a launcher (Accelerate); its input errors stay one line."""
    import shlex
    import subprocess

    cmd = [*shlex.split(launcher), "-m", *module_args]
    console.print(f"[dim]·[/dim] {' '.join(cmd)}", highlight=False)
    code = subprocess.run(cmd).returncode
    if code == 2:  # the launched command printed the input error as one line
        raise KinjectError(f"{what} under '{launcher}' stopped on an input error (above); fix it and rerun")
    if code != 0:
        raise KinjectError(f"{what} under '{launcher}' failed (its output is above); {hint}")


def _eval(model: str, task: str, limit: int | None, shots: int, index: Path | None, ks: list[int], cfg: Config,
          out: Path, console: Console) -> None:
    if cfg.evaluation.launch:  # data parallel: the same `kinject eval`, sharded over the processes
        args = ["kinject", "eval", "--model", model, "--task", task, "--shots", str(shots),
                "--batch-size", str(cfg.batch_size), "--device", cfg.device, "--dtype", cfg.dtype,
                "--backend", cfg.backend, "--out", str(out)]
        args += ["--limit", str(limit)] if limit else []
        args += ["--rag", str(index), "--k", ",".join(map(str, ks)), "--retriever", cfg.retriever] if index else []
        _launch(cfg.evaluation.launch, args, "evaluation", console, "rerun it")
        return
    from kinject.evaluation import run_eval

    run_eval(model, [task], shots, limit, cfg.batch_size, out, console, rag=index, ks=ks,
             retriever_kind=cfg.retriever, device=cfg.device, dtype=cfg.dtype, backend=cfg.backend)


# ---------------------------------------------------------------------------- running


@dataclass
class RunSummary:
    run_dir: Path
    computed: int
    cached: int
    failed: list[str]
    report: Path | None


def run(config_path: Path, run_dir: Path | None, cache: Path | None, console: Console,
        dry_run: bool = False, report: bool = True) -> RunSummary:
    """Plan, run what is not cached, fill the results store, write the report."""
    from kinject.assets import kinject_home

    cfg = load_config(config_path)
    check_tasks(cfg, config_path)
    run_dir = run_dir or Path("runs") / cfg.name
    cache = cache or kinject_home() / "stages"
    p = plan(cfg, cache, console, plan_placement(cfg, config_path, dry_run))
    if dry_run:
        _print_plan(p, console)
        return RunSummary(run_dir, 0, 0, [], None)

    # one process per run folder: a second `kinject run` of it refuses, naming the holder
    with owned(run_dir, "kinject run"):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(Path(config_path).read_text())
        (run_dir / "meta.json").write_text(json.dumps({"config": str(config_path), "cache": str(cache),
                                                       "kinject_version": __version__}, indent=2))
        (run_dir / "results.sqlite").unlink(missing_ok=True)  # derived data: rebuilt from the cache
        failed: list[str] = []
        with Store(run_dir, create=True) as store:
            for i, step in enumerate(p.steps, 1):
                broken = [d for d in step.deps if d.status == "failed"]
                if broken:
                    step.status, step.error = "failed", f"needs {broken[0].kind} '{broken[0].label}', which failed"
                elif step.done():
                    step.status = "cached"
                else:
                    _build_step(p, step, f"[{i}/{len(p.steps)}]", console)
                if step.status == "failed":
                    failed.append(f"{step.kind} {step.label}: {step.error}")
                _read_timing(step)
                store.put_stage(Stage(step.key, step.kind, step.label, step.status, step.wall_s, step.peak_rss_mb,
                                      step.error, step.device, step.peak_gpu_mb))
                if step.kind == "finetune" and step.status != "failed":
                    _store_training(store, step, p.trainings[step.key][1])
                if step.kind == "eval":
                    for ev in (e for e in p.evals if e.step is step):
                        _store_conditions(store, ev)
        report_dir = None
        if report:
            from kinject.report import write_report

            report_dir = write_report(run_dir)
    computed = sum(s.status == "computed" for s in p.steps)
    cached = sum(s.status == "cached" for s in p.steps)
    return RunSummary(run_dir, computed, cached, failed, report_dir)


def _build_step(p: Plan, step: Step, position: str, console: Console) -> None:
    """Compute one stage and record its status, time and memory. Another run building the same
    cache stage (two configs sharing it) is waited for; its finished output is then reused."""
    with owned(step.out, f"run building this {step.kind} stage", wait=True):
        if step.done():
            step.status = "cached"
            return
        console.print(f"[bold]\\{position} {step.kind}[/bold] {step.label} "
                      f"[dim](≈{_fmt_s(step.estimate_s)})[/dim]", highlight=False)
        started = time.perf_counter()
        launched = bool(p.cfg.finetune.launch if step.kind == "finetune" else
                        p.cfg.evaluation.launch if step.kind == "eval" else None)
        gpu = _GpuPeak(p.placement, launched)
        try:
            with _PeakRSS() as rss, gpu:
                step.build()
            step.status = "computed"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed stage must not stop the grid
            step.status = "failed"
            step.error = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
            if not isinstance(exc, KinjectError):
                step.error = f"{type(exc).__name__}: {step.error}"
            console.print(f"[red]stage failed[/red] {step.kind} {step.label}: {step.error}", highlight=False)
        step.wall_s = time.perf_counter() - started
        step.peak_rss_mb = rss.peak / 2**20 if step.status == "computed" else None
        step.peak_gpu_mb = gpu.peak_mb if step.status == "computed" else None
        _write_timing(step)


def _write_timing(step: Step) -> None:
    """Keep a stage's cost next to its output so cached reruns still report what it cost."""
    if step.status == "computed" and step.out.is_dir():
        (step.out.parent / f"{step.out.name}.cost.json").write_text(
            json.dumps({"wall_s": step.wall_s, "peak_rss_mb": step.peak_rss_mb, "peak_gpu_mb": step.peak_gpu_mb}))


def _read_timing(step: Step) -> None:
    f = step.out.parent / f"{step.out.name}.cost.json"
    if step.status == "cached" and f.is_file():
        cost = json.loads(f.read_text())
        step.wall_s, step.peak_rss_mb, step.peak_gpu_mb = cost["wall_s"], cost["peak_rss_mb"], cost.get("peak_gpu_mb")


def _store_training(store: Store, step: Step, info: dict) -> None:
    summary = json.loads((step.out / "summary.json").read_text())
    if "best_lr" in summary:  # an LR search: the chosen run's files
        best = summary["best_lr"]
        sub = step.out / f"lr-{best:g}"
        summary = json.loads((sub / "summary.json").read_text())
        log_path = sub / "log.jsonl"
    else:
        log_path = step.out / "log.jsonl"
    curve = []
    for line in log_path.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            curve.append(LossPoint(r["step"], float(r["epoch"]), r["loss"], "train"))
        elif r.get("val_loss") is not None and math.isfinite(r["val_loss"]):
            curve.append(LossPoint(r["step"], float(r["epoch"]), r["val_loss"], "val"))
    val = [v["val_loss"] for v in summary.get("val", []) if v.get("val_loss") is not None
           and math.isfinite(v["val_loss"])]
    store.put_training(Training(step.key, info["model"], info["kb"], info["method"], info["paraphrases"],
                                info["seed"], summary["config"]["lr"], summary["config"]["epochs"],
                                summary["steps"], summary["blocks"], summary["final_loss"],
                                val[-1] if val else None, step.wall_s, step.peak_rss_mb), curve)


def _store_conditions(store: Store, ev: EvalPlan) -> None:
    step = ev.step
    metric = headline_metric(ev.task.task)
    train_s = sum(s.wall_s or 0 for s in ([ev.train] + ev.train.deps if ev.train else []) if s.kind != "corpus")
    peaks = [s.peak_rss_mb for s in [step, *([ev.train] if ev.train else [])] if s.peak_rss_mb]
    for k, method in sorted(ev.method_names.items()):
        cid = stage_key("condition", {"eval": step.key, "k": k, "method": method})
        common = dict(model=ev.model, task=ev.task.task, method=method, k=k, shots=ev.shots,
                      paraphrases=ev.paraphrases, seed=ev.seed, metric=metric,
                      training_id=ev.train.key if ev.train else None)
        if step.status == "failed":
            store.put_condition(Condition(cid, status="failed", error=step.error, **common))  # type: ignore[arg-type]
            continue
        res = json.loads((step.out / "results.json").read_text())
        names = list(res["tasks"])
        name = next(n for n in names if n.endswith(f"+rag@{k}")) if len(names) > 1 or "+rag@" in names[0] \
            else names[0]
        r = res["tasks"][name]
        quality = next(iter(res.get("retrieval", {}).values()), {})
        rows = []
        with open(step.out / samples_file(name), encoding="utf-8") as fh:
            for line in fh:
                s = json.loads(line)
                pred = s["pred_norm"] if metric == "acc_norm" else s["pred"]
                rows.append(Row(s["id"], s["subject"], s["gold"], s["pred"], s["pred_norm"], int(pred == s["gold"]),
                                tuple(s["logliks"]), tuple(s["retrieved"])))
        store.put_condition(Condition(
            cid, status="done", n=r["n"], acc=r["acc"], acc_stderr=r["acc_stderr"], acc_norm=r["acc_norm"],
            acc_norm_stderr=r["acc_norm_stderr"], recall=quality.get(f"recall@{k}") if k else None,
            mrr=quality.get("mrr") if k else None, eval_s=r["seconds"], train_s=train_s,
            peak_rss_mb=max(peaks) if peaks else None, **common), rows)  # type: ignore[arg-type]


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def _print_plan(p: Plan, console: Console) -> None:
    """Per stage: where it runs, tokens, FLOPs (2·N·tokens scoring, 6·N·tokens training) and the
    time that takes at the throughput measured on the planned device now; GPU-hours in total."""
    from rich.table import Table

    from kinject.costs import estimate, fmt_count, throughput

    rate = throughput(p.placement, p.present)
    table = Table(title=f"plan for '{p.cfg.name}' ({len(p.steps)} stages)")
    for col in ("#", "stage", "label", "status", "device · dtype · backend/launcher", "tokens", "FLOPs", "estimate"):
        table.add_column(col, justify="right" if col in ("tokens", "FLOPs", "estimate") else "left")
    todo = gpu_h = 0.0
    unknown = []
    for i, s in enumerate(p.steps, 1):
        cached = s.done()
        seconds, tokens, flops = s.estimate_s, "", ""
        if s.work is not None:
            e = estimate(s.work, rate)
            tokens = ("" if s.work.exact else "≈") + fmt_count(s.work.tokens)
            flops = fmt_count(e.flops)
            if e.seconds is None:
                unknown.append(s.work.model)
            else:
                seconds = e.seconds
                if p.placement.kind == "cuda" and s.kind != "corpus" and not cached:
                    gpu_h += e.device_hours or 0
        todo += 0 if cached else seconds
        table.add_row(str(i), s.kind, s.label, "cached" if cached else "to run", s.device or "cpu", tokens, flops,
                      "–" if cached else _fmt_s(seconds))
    console.print(table)
    n_cond = sum(len(e.method_names) for e in p.evals)
    console.print(f"throughput: {rate.what}", highlight=False)
    line = f"{n_cond} conditions; estimated time to run: ≈{_fmt_s(todo)}"
    if p.placement.kind == "cuda":
        line += f"; ≈{gpu_h:,.1f} GPU-hours in all (time × GPUs per stage)"
    console.print(line, highlight=False)
    if unknown:
        console.print(f"no parameter count for {', '.join(sorted(set(unknown)))}: those stages use a "
                      f"rough per-question estimate", highlight=False)
