"""The plan of a run: a config → a graph of stages keyed by the hash of their inputs, with costs.

Every stage's output lives under `<cache>/<kind>/<hash of its inputs>`: the config values it
uses, the keys of the stages it reads, the stage version, and what it reads from disk. So a
rerun recomputes nothing and two configs that share a stage share its output. Each stage also
carries what it computes (`costs.Work`) and where it runs, for `kinject run --dry-run`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from rich.console import Console

from kinject.core.errors import KinjectError
from kinject.eval.methods import DISTILLED, Method, parse_method
from kinject.experiment.config import Config, KBConfig, TaskConfig
from kinject.experiment.stages import (
    Selection,
    build_corpus_stage,
    build_index_stage,
    eval_stage,
    finetune_stage,
    pairs_stage,
    paraphrase_stage,
    teacher_stage,
)
from kinject.runtime.costs import (
    Estimate,
    Throughput,
    Work,
    estimate,
    fmt_count,
    load_rates,
    local_config,
    processes,
    rates_file,
    throughput,
)
from kinject.runtime.devices import Placement, resolve
from kinject.runtime.hyper import MIN_STEPS

STAGE_VERSION = 1
"""Bump when a stage's output format or semantics change: old cache entries are then ignored."""


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
    """A stage's cache key: a hash of its kind, the stage version and its inputs."""
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
    optimizer_steps: int | None = None
    """A fine-tune's optimizer steps in all (estimated from the data before training)."""


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
    role: str = "target"
    """target: a task the run injects knowledge for; control: a task scored closed-book to measure
    what fine-tuning cost elsewhere (forgetting)."""
    target: str | None = None
    """For a fine-tuned model on a control task: the target task it was fine-tuned for."""


@dataclass
class Plan:
    """What a run will do: its steps, evaluations and trainings, and where they run."""
    cfg: Config
    steps: list[Step]
    evals: list[EvalPlan]
    trainings: dict[str, tuple[Step, dict]]
    placement: Placement
    present: bool
    """False when planning (dry run) for a device this machine does not have."""
    rates: dict[str, Throughput] = field(default_factory=dict)
    """The throughput each precision's stages were estimated at, by dtype (set by `estimate_steps`)."""
    cache: Path | None = None
    """The stage cache: where the shares of the peak measured on this machine live (`costs.rates_file`)."""


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


def _check_layers(model: str, layers: list[int], where: object) -> None:
    """`finetune.distill.layers` against the model's block count, before any stage runs (a model
    not on disk yet is checked by its teacher stage when it loads)."""
    from kinject.train.distill import hidden_layers

    config = local_config(model) or {}
    blocks = config.get("text_config", config).get("num_hidden_layers")
    if not blocks:  # not on this machine yet: the teacher stage checks with the model loaded
        return
    try:
        hidden_layers(int(blocks), layers)
    except KinjectError as exc:
        raise KinjectError(f"{where}: {exc}") from None


def _short(ref: str) -> str:
    """A readable label part for a model or task reference (a path's last component)."""
    return _slug(ref.rsplit("/", 1)[-1] if "/" in ref and Path(ref.split("@")[0]).exists() else ref)


def plan(cfg: Config, cache: Path, console: Console, placed: tuple[Placement, bool] | None = None) -> Plan:
    """The stage graph for a config (nothing runs here but cheap reads of cached outputs)."""
    return _Planner(cfg, cache, console, *(placed or (resolve(cfg.device, cfg.dtype), True))).build()


class _Planner:
    """Builds a `Plan` one part at a time: knowledge bases, then per model × task × variant the
    fine-tune (with its paraphrases) and the evaluations."""

    def __init__(self, cfg: Config, cache: Path, console: Console, placement: Placement, present: bool) -> None:
        self.cfg, self.cache, self.console = cfg, cache, console
        self.placement, self.present = placement, present
        # the numbers depend on the kind of device and the dtype, not on which GPU of a kind
        self.placed_key = {"device": placement.kind, "dtype": placement.dtype}
        self.where = f"{placement.device} · {placement.dtype}"
        self.steps: list[Step] = []
        self.by_key: dict[str, Step] = {}
        self.corpora: dict[str, Step] = {}
        self.indexes: dict[str, Step] = {}
        self.trainings: dict[str, tuple[Step, dict]] = {}
        self.evals: list[EvalPlan] = []
        self.sizes: dict[str, tuple[int, float, bool]] = {}

    def kb_size(self, kb: str) -> tuple[int, float, bool]:
        """(chunks, mean tokens per chunk, exact?) of a knowledge base, read once per plan."""
        if kb not in self.sizes:
            kbc = self.cfg.knowledge_bases[kb]
            self.sizes[kb] = _chunk_count(self.corpora[kb], kbc, [self.cfg.path(s) for s in kbc.sources])
        return self.sizes[kb]

    def where_launched(self, launch: str | None, dtype: str, backend: str | None = None) -> str:
        """Where a stage runs: "cuda:0 · bf16 · hf", or under a launcher "cuda · bf16 · accelerate ×4"
        (each process takes its own device of the kind)."""
        device = self.placement.kind if launch else self.placement.device
        launcher = f" · {Path(launch.split()[0]).name} ×{processes(launch)}" if launch else ""
        return f"{device} · {dtype}" + (f" · {backend}" if backend else "") + launcher

    def add(self, kind: str, label: str, inputs: dict, build: Callable[[Path], None], done_file: str,
            estimate: float, deps: Sequence[Step] = ()) -> Step:
        """The stage for these inputs (one per key: configs and variants that share it share it)."""
        key = stage_key(kind, inputs)
        if key in self.by_key:
            return self.by_key[key]
        out = self.cache / kind / key
        step = Step(kind, label, key, out, partial(build, out=out), partial(_done, out / done_file), estimate,
                    list(deps))
        self.by_key[key] = step
        self.steps.append(step)
        return step

    def build(self) -> Plan:
        from kinject.tasks.registry import load_task
        from kinject.tasks.task import select

        self.knowledge_bases()
        # questions per task (cheap: loaded to know which chunks are sources, and for estimates)
        controls = [TaskConfig(task=c.task, limit=c.limit, shots=[c.shots]) for c in self.cfg.control]
        every = list(self.cfg.tasks) + controls
        self.tasks = {t.task: load_task(self.cfg.task_path(t.task)) for t in every}
        self.items = {(t.task, t.limit): select(self.tasks[t.task], t.limit) for t in every}
        for model in self.cfg.models:
            trained: list[tuple[Step, Method, int, str]] = []
            for t in self.cfg.tasks:
                for fam, names in variants(self.cfg, t).items():
                    m = parse_method(next(iter(names.values())))
                    for seed in self.cfg.seeds if m.ft else [0]:
                        train = self.training(model, t, m, seed) if m.ft else None
                        if train is not None:
                            trained.append((train, m, seed, t.task))
                        for shots in t.shots:
                            self.evaluation(model, t, shots, names, fam, m.paraphrases, seed, train)
            for c in controls:  # forgetting: the base model and every fine-tuned one, closed-book
                self.evaluation(model, c, c.shots[0], {0: "base"}, "base", 0, 0, None, role="control")
                for train, m, seed, target in trained:
                    self.evaluation(model, c, c.shots[0], {0: m.family}, m.family, m.paraphrases, seed, train,
                                    role="control", target=target)
        return Plan(self.cfg, self.steps, self.evals, self.trainings, self.placement, self.present,
                    cache=self.cache)

    def knowledge_bases(self) -> None:
        """A corpus per knowledge base a task uses, and its index when a task retrieves from it."""
        cfg = self.cfg
        emb = cfg.path(cfg.embedder)  # a catalog name, a hub id, or a folder beside the config
        emb_content = fingerprint(emb)  # a local folder: its files are part of the index key
        for name, kb in cfg.knowledge_bases.items():
            if not any(t.kb == name for t in cfg.tasks):
                continue
            tok = cfg.path(kb.tokenizer or cfg.models[0])
            sources = [cfg.path(s) for s in kb.sources]
            inputs = {"kb": {**kb.model_dump(exclude={"tokenizer", "context_header"}), "sources": sources},
                      "tokenizer": tok,
                      "content": [fingerprint(s) for s in sources] + [fingerprint(tok)]}
            c = self.corpora[name] = self.add("corpus", name, inputs, partial(build_corpus_stage, kb, sources, tok),
                                              "meta.json", 20)
            if any(parse_method(m).rag for t in cfg.tasks if t.kb == name for m in cfg.task_methods(t)):
                ix_inputs = {"corpus": c.key, "embedder": emb, "kind": cfg.index_kind, **self.placed_key,
                             **({"embedder_content": emb_content} if emb_content != emb else {}),
                             **({"context_header": kb.context_header} if kb.context_header is not None else {})}
                ix = self.indexes[name] = self.add(
                    "index", f"{name}-{_short(cfg.embedder)}", ix_inputs,
                    partial(build_index_stage, c.out, emb, cfg.index_kind, self.placement, kb.context_header), "meta.json", 60,
                    [c])
                n_chunks, per_chunk, exact = self.kb_size(name)
                ix.work, ix.device = Work("embed", emb, n_chunks * per_chunk, exact=exact), self.where

    def training(self, model: str, t: TaskConfig, m: Method, seed: int) -> Step:
        """The fine-tune of `model` for task t: on its knowledge base's chunks (and paraphrases, for
        FT-par), or on QA pairs from them (SFT, RAFT); with replay text for a `+replay` method."""
        cfg, ft = self.cfg, self.cfg.finetune
        assert t.kb is not None and m.ft is not None
        c = self.corpora[t.kb]
        sources = sorted({s for q in _kb_questions(cfg, t.kb, self.items) for s in q.source_chunks}) \
            if ft.train_on in ("sources", "sample") else []
        sample = ft.sample if ft.train_on == "sample" else None
        selection = Selection(tuple(sources), *((sample.size, sample.fraction, sample.seed) if sample else ()))
        n_par = m.paraphrases
        par = self.paraphrases(c, t.kb, selection, n_par, seed) if n_par else None
        inputs = {"model": cfg.path(model), "model_content": fingerprint(cfg.path(model)), "corpus": c.key,
                  "sources": sources, **selection.key(), "paraphrases": par.key if par else None, "method": m.ft, "seed": seed,
                  "device": self.placement.kind, "ft": ft.keyed(_NOT_HYPER)}
        deps = [c] + ([par] if par else [])
        pairs = replay = None
        if m.recipe != "cpt":  # keys of continued pre-training stay those of earlier versions
            self.check_raft(t.kb, sources, m)
            pairs = self.pairs(c, t.kb, selection, seed)
            inputs.update(recipe=m.recipe, pairs=pairs.key, task=cfg.task_path(t.task),
                          task_content=fingerprint(cfg.task_path(t.task)),
                          **({"raft": ft.raft.model_dump()} if m.recipe == "raft" else {}))
            deps.append(pairs)
        teacher = self.teacher(model, c, pairs, t, selection, m.recipe == "kmodule") \
            if m.recipe in DISTILLED and pairs else None
        if teacher is not None:
            inputs.update(teacher=teacher.key, distill=ft.distill.model_dump(  # the prompt-distillation keys of before
                exclude=set() if m.recipe == "kmodule" else {"layers", "hidden_weight"}))
            deps.append(teacher)
        if m.replay:
            assert ft.replay is not None
            replay = self.replay_corpus(t.kb)
            inputs.update(replay={"corpus": replay.key, "fraction": ft.replay.fraction})
            deps.append(replay)
        step = self.add("finetune", f"{_short(model)}-{t.kb}-{m.family.replace(':', '')}-s{seed}", inputs,
                        partial(finetune_stage, cfg.path(model), c.out, selection, par.out if par else None, m.ft,
                                seed, ft, self.placement, console=self.console, recipe=m.recipe,
                                pairs=pairs.out if pairs else None, task=cfg.task_path(t.task),
                                replay=replay.out if replay else None, teacher=teacher.out if teacher else None),
                        "summary.json", 1.3 * ft.epochs * max(1, len(sources) or 100), deps)
        n_chunks, per_chunk, exact = self.kb_size(t.kb)
        chunks = selection.target(n_chunks)
        pairs_each = 0
        if m.recipe == "cpt":
            tokens = chunks * (1 + n_par) * per_chunk
        else:  # about 48 tokens a prompt + answer; RAFT adds its D (+ oracle) chunks
            docs = ft.raft.distractors + ft.raft.oracle_fraction if m.recipe == "raft" else 0
            pairs_each = min(ft.pairs_per_chunk, ft.raft.per_chunk or ft.pairs_per_chunk) if m.recipe == "raft" \
                else ft.pairs_per_chunk
            tokens = chunks * pairs_each * (48 + docs * per_chunk)
        if m.replay and ft.replay is not None:
            tokens /= 1 - ft.replay.fraction
        step.work = Work("train", cfg.path(model), tokens * ft.epochs * len(ft.lr), processes(ft.launch), exact,
                         "bf16" if ft.bf16 else "fp32")
        rows = tokens / ft.block_size if m.recipe == "cpt" else chunks * (pairs_each + (
            ft.replay.fraction / (1 - ft.replay.fraction) * 48 * pairs_each / ft.block_size
            if m.replay and ft.replay else 0))
        step.optimizer_steps = max(1, math.ceil(rows / ft.batch)) * ft.epochs
        step.device = self.where_launched(ft.launch, "bf16" if ft.bf16 else "fp32")
        self.trainings[step.key] = (step, {"model": model, "kb": t.kb, "method": m.family, "paraphrases": n_par,
                                           "seed": seed})
        return step

    def check_raft(self, kb: str, sources: list[str], m: Method) -> None:
        """RAFT's distractors must exist: too few chunks fail here, before any stage runs (the
        count is exact once the corpus is built, else at least the questions' source chunks)."""
        if m.recipe != "raft":
            return
        n_chunks, _, exact = self.kb_size(kb)
        known = n_chunks if exact else len(sources)
        want = self.cfg.finetune.raft.distractors + 1
        if known and known < want:
            raise KinjectError(f"{self.cfg._file}: finetune.raft.distractors: {m.name} needs {want} chunks in knowledge base '{kb}' "
                               f"(the oracle and {want - 1} distractors); it has {known}: lower "
                               f"finetune.raft.distractors or add documents")

    def teacher(self, model: str, corpus: Step, pairs: Step, t: TaskConfig, selection: Selection,
                hidden: bool = False) -> Step:
        """Prompt distillation's cached teacher logits: the frozen model reading each pair's chunk
        (its own stage, shared by every learning rate, seed and LoRA/full student); a knowledge
        module's teacher also keeps its hidden states (`hidden`), so it is a stage of its own."""
        cfg, ft = self.cfg, self.cfg.finetune
        layers = ft.distill.layers
        if hidden and layers is not None:
            _check_layers(cfg.path(model), layers, cfg._file)
        inputs = {"model": cfg.path(model), "model_content": fingerprint(cfg.path(model)), "corpus": corpus.key,
                  "pairs": pairs.key, "task": cfg.task_path(t.task), "task_content": fingerprint(cfg.task_path(t.task)),
                  "top_k": ft.distill.top_k, **({"target": "teacher"} if ft.distill.target == "teacher" else {}),
                  **({"hidden": layers or "all"} if hidden else {}), **self.placed_key}
        step = self.add("teacher", f"{_short(model)}-{t.kb}-top{ft.distill.top_k}-{ft.distill.target}"
                        + ("-hidden" if hidden else ""), inputs,
                        partial(teacher_stage, cfg.path(model), corpus.out, pairs.out, cfg.task_path(t.task),
                                ft.distill, self.placement, console=self.console, hidden=hidden),
                        "examples.json", 30.0, [corpus, pairs])
        n_chunks, per_chunk, _ = self.kb_size(t.kb or "")  # each pair: its chunk, question and answer
        step.work = Work("score", cfg.path(model), selection.target(n_chunks) * ft.pairs_per_chunk * (per_chunk + 48))
        step.device = self.where
        return step

    def pairs(self, corpus: Step, kb: str, selection: Selection, seed: int) -> Step:
        """The training QA pairs of a knowledge base (the chunks fine-tuning uses); none states a
        question the run evaluates on this knowledge base."""
        from kinject.experiment.config import pairs_kind

        cfg, ft = self.cfg, self.cfg.finetune
        assert ft.pairs is not None
        kind = pairs_kind(ft.pairs)
        spec = cfg.path(ft.pairs) if kind == "file" else ft.pairs
        specs = {cfg.task_path(t.task) for t in cfg.tasks if t.kb == kb}
        # a free-form task beside the same questions in another format asks nothing new
        tasks = sorted(x for x in specs if not (x.endswith("@free") and any(
            o.partition("@")[0] == x.partition("@")[0] for o in specs - {x})))
        local = kind == "generator" and spec.startswith("local")
        sources = list(selection.sources)
        inputs = {"corpus": corpus.key, "sources": sources, **selection.key(), "pairs": spec, "content": fingerprint(spec),
                  "per_chunk": ft.pairs_per_chunk, "seed": seed, "tasks": tasks,
                  "tasks_content": [fingerprint(x) for x in tasks], **(self.placed_key if local else {})}
        step = self.add("pairs", f"{kb}-{kind}-x{ft.pairs_per_chunk}", inputs,
                        partial(pairs_stage, corpus.out, selection, spec, ft.pairs_per_chunk, tasks, seed,
                                self.placement, self.cache, console=self.console),
                        "pairs.jsonl", (20.0 if kind == "generator" else 0.05) * max(1, len(sources) or 100), [corpus])
        step.device = self.where if local else (spec.split("#")[0] if kind == "generator" else "cpu")
        return step

    def replay_corpus(self, kb: str) -> Step:
        """The replay source chunked like the knowledge base (its tokenizer, chunk size)."""
        cfg, ft = self.cfg, self.cfg.finetune
        assert ft.replay is not None
        kbc = cfg.knowledge_bases[kb]
        replay_kb = KBConfig(sources=[ft.replay.source], chunk_tokens=kbc.chunk_tokens, min_tokens=kbc.min_tokens,
                             small=kbc.small, tokenizer=kbc.tokenizer)
        tok = cfg.path(kbc.tokenizer or cfg.models[0])
        sources = [cfg.path(ft.replay.source)]
        inputs = {"kb": {**replay_kb.model_dump(exclude={"tokenizer", "context_header"}), "sources": sources},
                  "tokenizer": tok,
                  "content": [fingerprint(x) for x in sources] + [fingerprint(tok)]}
        return self.add("corpus", f"replay-{_short(ft.replay.source)}", inputs,
                        partial(build_corpus_stage, replay_kb, sources, tok), "meta.json", 20)

    def paraphrases(self, corpus: Step, kb: str, selection: Selection, n: int, seed: int) -> Step:
        cfg = self.cfg
        local = cfg.generator.startswith("local")  # a local generator's text depends on device and dtype
        sources = list(selection.sources)
        step = self.add("paraphrase", f"{kb}-x{n}", {"corpus": corpus.key, "sources": sources, **selection.key(),
                                                     "generator": cfg.generator, "n": n, "seed": seed,
                                                     **(self.placed_key if local else {})},
                        partial(paraphrase_stage, corpus.out, selection, cfg.generator, n, seed, self.placement,
                                self.cache, console=self.console),
                        "paraphrases.parquet", 30.0 * n * max(1, len(sources) or 50), [corpus])
        step.device = self.where if local else cfg.generator.split("#")[0]
        return step

    def evaluation(self, model: str, t: TaskConfig, shots: int, names: dict[int, str], fam: str, n_par: int,
                   seed: int, train: Step | None, role: str = "target", target: str | None = None) -> None:
        """One eval stage: the model variant on the task, at every K its methods need."""
        cfg = self.cfg
        rag_ks = sorted(k for k in names if k > 0)
        idx = self.indexes.get(t.kb) if rag_ks and t.kb else None
        # K=0 too (the closed-book point of the accuracy-vs-K line), except for RAFT, which is only
        # ever deployed with retrieval
        ks = sorted(set(names) | ({0} if not fam.startswith("raft") else set())) if idx else [0]
        qs = self.items[t.task, t.limit]
        model_in = train.key if train else cfg.path(model)
        inputs = {"model": model_in, "model_content": fingerprint(model_in), "task": cfg.task_path(t.task),
                  "task_content": fingerprint(cfg.task_path(t.task)), "limit": t.limit, "shots": shots,
                  "index": idx.key if idx else None, "ks": ks, "retriever": cfg.retriever, "backend": cfg.backend,
                  **self.placed_key}
        # 0.15 s per question on 2 cores at K=0; each retrieved chunk adds 1.5x that (no parameter count)
        estimate = 0.15 * len(qs) * sum(1 + 1.5 * k for k in ks) * (1 + shots) * \
            (2 if self.tasks[t.task].fmt == "free" else 1)
        label = (f"{_short(model)}-{_short(t.task)}-{fam.replace(':', '')}-s{seed}-{shots}shot"
                 + ("-control" if role == "control" else ""))
        step = self.add("eval", label, inputs,
                        partial(eval_stage, str(train.out / "model") if train else cfg.path(model),
                                cfg.task_path(t.task), t.limit, shots, idx.out if idx else None, ks, cfg,
                                console=self.console),
                        "results.json", estimate, ([train] if train else []) + ([idx] if idx else []))
        chunk = self.kb_size(t.kb)[1] if idx and t.kb else 0
        answered = len(qs) * GENERATED_TOKENS if self.tasks[t.task].fmt == "free" else 0  # free form: generation
        step.work = Work("score", cfg.path(model), sum(_prompt_tokens(self.tasks[t.task], qs, shots)
                                                       + len(qs) * k * chunk + answered for k in ks),
                         processes(cfg.evaluation.launch))
        step.device = self.where_launched(cfg.evaluation.launch, self.placement.dtype, cfg.backend.split("#")[0])
        self.evals.append(EvalPlan(step, model, t, shots, names, n_par, seed, train,
                                   [x for x in (self.corpora.get(t.kb or ""), idx) if x], role, target))


def _done(path: Path) -> bool:
    return path.is_file()


_NOT_HYPER = {"train_on", "sample", "save_every", "launch", "pairs", "pairs_per_chunk", "raft", "replay", "distill"}
"""`finetune:` keys that are not the trainer's hyper-parameters (each recipe keys its own data)."""


def variants(cfg: Config, t: TaskConfig) -> dict[str, dict[int, str]]:
    """A task's methods grouped by model variant (`Method.family`: 'base', 'ft', 'sft+replay', ...)
    → {K: method name}. RAFT is only evaluated with retrieval, so its K=0 is the base model's."""
    out: dict[str, dict[int, str]] = {}
    for m in (parse_method(name) for name in cfg.task_methods(t)):
        for k in [k for k in (t.k or cfg.k) if k > 0] if m.rag else [0]:
            out.setdefault(m.family, {})[k] = m.name
    return out


GENERATED_TOKENS = 32 * 6
"""What a free-form answer (`kinject.eval.freeform.MAX_TOKENS` = 32 tokens) costs, in scored tokens:
decoding runs one token of a batch of 8 at a time, below the matmul peak scoring runs at;
measured on 2 CPU cores with SmolLM2-135M (23 questions, 3-shot, K=0 and 1: 39 s, of which the
prompts ≈ 22 s at the multiple-choice rate; a generated token ≈ 6 scored ones)."""


def _prompt_tokens(task, items: list, shots: int) -> float:
    """Tokens a task's prompts forward (about 4 characters a token): context plus every option."""
    from kinject.tasks.task import render

    chars = 0
    for it in items:
        p = render(task, it, shots)
        chars += len(p.context) + sum(len(c) for c in p.continuations)
    return chars / 4


_PACKED = {".pdf": 8, ".docx": 8}
"""About how many bytes of these files hold one character of text (compressed streams, markup)."""


def _chunk_count(corpus: Step, kb: KBConfig, sources: Sequence[str]) -> tuple[int, float, bool]:
    """(chunks, mean tokens per chunk, exact?) of a knowledge base: read once its corpus stage is
    cached, else a guess: a local file or folder from its size (about 4 characters a token), a
    built-in source 1,000 chunks; chunks 80% full."""
    if (corpus.out / "meta.json").is_file():
        try:
            import pyarrow.parquet as pq

            sizes = pq.read_table(corpus.out / "chunks.parquet", columns=["n_tokens"]).column("n_tokens").to_pylist()
            return len(sizes), sum(sizes) / max(1, len(sizes)), True
        except Exception:  # noqa: BLE001 - a damaged cache entry only makes the estimate a guess
            pass
    per_chunk = 0.8 * kb.chunk_tokens
    chunks = 0.0
    for src in sources:
        path = Path(src)
        if not path.exists():
            chunks += 1000
            continue
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        chars = sum(f.stat().st_size / _PACKED.get(f.suffix.lower(), 1) for f in files)
        chunks += max(1.0, chars / 4 / per_chunk)
    return max(1, round(chunks)), per_chunk, False


def _kb_questions(cfg: Config, kb: str, items: dict) -> list:
    return [q for t in cfg.tasks if t.kb == kb for q in items[t.task, t.limit]]


def warn_under_trained(p: Plan, console: Console) -> None:
    """Print `under_trained`'s lines as warnings (the dry run, and `kinject run` before training)."""
    for line in under_trained(p):
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


def under_trained(p: Plan) -> list[str]:
    """One line per fine-tune with fewer than `MIN_STEPS` optimizer steps, with the fix."""
    ft = p.cfg.finetune
    out = []
    for step, info in p.trainings.values():
        if step.optimizer_steps is not None and step.optimizer_steps < MIN_STEPS:
            fix = (f"lower finetune.batch (now {ft.batch}; e.g. {max(ft.micro_batch, ft.batch // 4)})"
                   if ft.batch > ft.micro_batch else f"raise finetune.epochs (now {ft.epochs})")
            out.append(f"fine-tune {step.label} gets ≈{step.optimizer_steps} optimizer steps (fewer than "
                       f"{MIN_STEPS}): its arm will say little about {info['method']}; {fix}")
    return out


def fmt_s(s: float) -> str:
    """Seconds as "42 s", or minutes from 90 s on."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def estimate_steps(p: Plan) -> dict[str, Estimate]:
    """Each stage's `estimate_s` from the cost model at the throughput measured now, at the share of
    the peak stages reached on this machine where some were measured (`costs.efficiency`; stages
    with no model to run, or a model of unknown size, keep their rough guess); returns the
    estimates by stage key."""
    measured = load_rates(rates_file(p.cache)) if p.cache is not None else {}
    rates = {p.placement.dtype: throughput(p.placement, p.present, measured)}
    for s in p.steps:  # a stage in another precision (bf16 fine-tuning) at that precision's throughput
        dtype = s.work.dtype if s.work is not None and s.work.dtype else p.placement.dtype
        if dtype not in rates:
            rates[dtype] = throughput(replace(p.placement, dtype=dtype), p.present, measured)
    p.rates = rates
    estimates = {s.key: estimate(s.work, rates[s.work.dtype or p.placement.dtype]) for s in p.steps
                 if s.work is not None}
    for s in p.steps:
        seconds = estimates[s.key].seconds if s.key in estimates else None
        if seconds is not None:
            s.estimate_s = seconds
    return estimates


def print_plan(p: Plan, console: Console) -> None:
    """Per stage: where it runs, tokens, FLOPs (2·N·tokens scoring, 6·N·tokens training) and the
    time that takes at the throughput measured on the planned device now, at the share of it each
    kind of work reached on this machine (or the nominal one); GPU-hours in total."""
    from rich.table import Table

    estimates = estimate_steps(p)
    table = Table(title=f"plan for '{p.cfg.name}' ({len(p.steps)} stages)")
    for col in ("#", "stage", "label", "status", "device · dtype · backend/launcher", "tokens", "FLOPs", "estimate"):
        table.add_column(col, justify="right" if col in ("tokens", "FLOPs", "estimate") else "left")
    todo = gpu_h = 0.0
    unknown = []
    for i, s in enumerate(p.steps, 1):
        cached = s.done()
        tokens = flops = ""
        if s.work is not None:
            e = estimates[s.key]
            tokens = ("" if s.work.exact else "≈") + fmt_count(s.work.tokens)
            flops = fmt_count(e.flops)
            if e.seconds is None:
                unknown.append(s.work.model)
            elif p.placement.kind == "cuda" and not cached:
                gpu_h += e.device_hours or 0
        todo += 0 if cached else s.estimate_s
        table.add_row(str(i), s.kind, s.label, "cached" if cached else "to run", s.device or "cpu", tokens, flops,
                      "–" if cached else fmt_s(s.estimate_s))
    console.print(table)
    n_cond = sum(len(e.method_names) for e in p.evals)
    shares = {(s.work.kind, s.work.dtype or p.placement.dtype): estimates[s.key].share for s in p.steps
              if s.work is not None and estimates[s.key].share is not None}
    for dtype, r in p.rates.items():  # the plan's precision, and bf16 fine-tuning's where it differs
        console.print(f"throughput: {r.what}", highlight=False)
        for (kind, d), share in sorted(shares.items()):
            if d == dtype:
                console.print(f"  {kind} {d}: {share.describe()}", highlight=False)
    line = f"{n_cond} conditions; estimated time to run: ≈{fmt_s(todo)}"
    if p.placement.kind == "cuda":
        line += f"; ≈{gpu_h:,.1f} GPU-hours in all (time × GPUs per stage)"
    console.print(line, highlight=False)
    warn_under_trained(p, console)
    if unknown:
        console.print(f"no parameter count for {', '.join(sorted(set(unknown)))}: those stages use a "
                      f"rough per-question estimate", highlight=False)
