"""`kinject run CONFIG`: one YAML config → the paper's grid as a graph of cached stages.

corpus → index → (paraphrase →) finetune → eval → results store → report. The config is
`kinject.experiment.config`, the stage graph and its costs `kinject.experiment.planning`, what each stage computes
`kinject.experiment.stages`; this module runs the plan: one process per run folder, each stage built once
(a stage another run is building is waited for), its time and memory recorded, the results
store filled, the report written. Every stage computed here teaches the cost model the share of
the matmul peak it reached on this machine (`costs.record_share`), so later plans, hints and
`kinject init`'s designs are costed on the speeds actually reached. A killed run resumes at the
first unfinished stage (fine-tuning resumes from its own checkpoints). The run directory holds
only what is cheap to rebuild from the cache: the results SQLite file, the config, and the report.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from kinject import __version__
from kinject.core.errors import KinjectError, error_line
from kinject.core.fsio import owned
from kinject.eval.results import (
    Condition,
    LossPoint,
    Row,
    Stage,
    Store,
    Training,
    samples_file,
)
from kinject.experiment.config import check_tasks, load_config
from kinject.experiment.planning import (
    EvalPlan,
    Plan,
    Step,
    estimate_steps,
    fmt_s,
    plan,
    plan_placement,
    print_plan,
    stage_key,
    warn_under_trained,
)
from kinject.runtime.costs import Work, achieved_share, rates_file, record_share, share_key
from kinject.runtime.devices import Placement, peak_gpu_mb, reset_peak_gpu
from kinject.tasks.task import headline_metric


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
            reset_peak_gpu(self.placement)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = peak_gpu_mb(self.placement) if self.active else None


@dataclass
class RunSummary:
    """What `kinject run` did: its folder, stages computed, cached and failed, and the report."""
    run_dir: Path
    computed: int
    cached: int
    failed: list[str]
    report: Path | None


def run(config_path: Path, run_dir: Path | None, cache: Path | None, console: Console,
        dry_run: bool = False, report: bool = True) -> RunSummary:
    """Plan, run what is not cached, fill the results store, write the report."""
    from kinject.runtime.assets import stage_cache

    cfg = load_config(config_path)
    check_tasks(cfg, config_path)
    run_dir = run_dir or Path("runs") / cfg.name
    cache = cache or stage_cache()
    p = plan(cfg, cache, console, plan_placement(cfg, config_path, dry_run))
    if dry_run:
        print_plan(p, console)
        return RunSummary(run_dir, 0, 0, [], None)
    if any(not s.done() for s in p.steps):  # the stage hints below, from the same cost model as --dry-run
        estimate_steps(p)
    # one process per run folder: a second `kinject run` of it refuses, naming the holder, before
    # it says anything else
    with owned(run_dir, "kinject run"):
        counted = all(s.kind != "corpus" or s.done() for s in p.steps)  # step counts from the real chunks
        if counted:  # else counted once the corpora are built, before the first fine-tune
            warn_under_trained(p, console)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(Path(config_path).read_text())
        (run_dir / "meta.json").write_text(json.dumps({"config": str(config_path), "cache": str(cache),
                                                       "kinject_version": __version__}, indent=2))
        (run_dir / "results.sqlite").unlink(missing_ok=True)  # derived data: rebuilt from the cache
        failed: list[str] = []
        recount = _Recount(p, lambda: plan(cfg, cache, console, (p.placement, p.present)))
        with Store(run_dir, create=True) as store:
            for i, step in enumerate(p.steps, 1):
                if step.kind == "finetune" and not counted:  # the corpora exist now: count again, exactly
                    counted = True
                    warn_under_trained(recount.plan(), console)
                broken = [d for d in step.deps if d.status == "failed"]
                if broken:
                    step.status, step.error = "failed", f"needs {broken[0].kind} '{broken[0].label}', which failed"
                elif step.done():
                    step.status = "cached"
                else:
                    _build_step(p, step, f"[{i}/{len(p.steps)}]", console, run_dir / "logs", recount)
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
            from kinject.report.build import write_report

            report_dir = write_report(run_dir)
    computed = sum(s.status == "computed" for s in p.steps)
    cached = sum(s.status == "cached" for s in p.steps)
    return RunSummary(run_dir, computed, cached, failed, report_dir)


def _build_step(p: Plan, step: Step, position: str, console: Console, logs: Path,
                recount: _Recount | None = None) -> None:
    """Compute one stage and record its status, time and memory (and, with `recount`, the share of
    the peak it reached: `_learn`). Another run building the same cache stage (two configs sharing
    it) is waited for; its finished output is then reused. A stage that fails on a bug (not a
    `KinjectError`, whose one line says it all) leaves its full traceback in
    `logs/<kind>-<label>.log`; the console line and the report point to it."""
    with owned(step.out, f"run building this {step.kind} stage", wait=True):
        if step.done():
            step.status = "cached"
            return
        resumed = step.out.exists()  # a killed run's partial output (fine-tuning checkpoints)
        console.print(f"[bold]\\{position} {step.kind}[/bold] {step.label} "
                      f"[dim](≈{fmt_s(step.estimate_s)})[/dim]", highlight=False)
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
            step.error = error_line(exc, 500)
            if not isinstance(exc, KinjectError):
                logs.mkdir(parents=True, exist_ok=True)
                log = logs / f"{step.kind}-{step.label}.log"
                log.write_text("".join(traceback.format_exception(exc)))
                step.error = f"{type(exc).__name__}: {step.error} (traceback: {log})"
            console.print(f"[red]stage failed[/red] {step.kind} {step.label}: {step.error}", highlight=False)
        step.wall_s = time.perf_counter() - started
        step.peak_rss_mb = rss.peak / 2**20 if step.status == "computed" else None
        step.peak_gpu_mb = gpu.peak_mb if step.status == "computed" else None
        _write_timing(step)
        if recount is not None and step.status == "computed" and not resumed:
            _learn(p, step, recount.work(step))


class _Recount:
    """The plan counted on the knowledge bases as built: a plan made before a corpus existed
    guessed its chunks, so once more corpora are built it is made again (cheap: no stage runs),
    once for both its users: the under-trained warning before the first fine-tune, and the exact
    token counts the measured shares are computed from."""

    def __init__(self, p: Plan, replan: Callable[[], Plan]) -> None:
        self.first, self.replan = p, replan
        self.built = self._built()
        self.latest = p

    def _built(self) -> frozenset[str]:
        return frozenset(s.key for s in self.first.steps if s.kind == "corpus" and s.done())

    def plan(self) -> Plan:
        """The plan counted on the corpora built by now (made again only when another was built)."""
        built = self._built()
        if built != self.built:
            self.built = built
            self.latest = self.replan()
        return self.latest

    def work(self, step: Step) -> Work | None:
        """The stage's work, counted on the corpora built by now."""
        try:
            latest = self.plan()
        except Exception:  # noqa: BLE001 - learning never fails a run: the last plan's counts stay
            latest = self.latest
        return next((s.work for s in latest.steps if s.key == step.key), step.work)


def _learn(p: Plan, step: Step, work: Work | None) -> None:
    """Record the share of the matmul peak a computed stage reached in the cache's rates file
    (`costs.achieved_share` says which stages are worth it). Not recorded: an eval on a backend
    other than `hf` (a server's speed is not this process's matmuls), an index whose vectors were
    all cached (one partly cached counts only the chunks embedded now), a compiled fine-tune (its
    time holds the compile, and its rate is not the eager one other plans assume), and nothing
    when the plan has no cache or rates (no stage was estimated)."""
    if work is None or step.wall_s is None or p.cache is None or (step.kind == "eval" and p.cfg.backend != "hf"):
        return
    if step.kind == "finetune" and p.cfg.finetune.compile:
        return
    rate = p.rates.get(work.dtype or p.placement.dtype)
    if rate is None or rate.machine is None:
        return
    done = 1.0
    if step.kind == "index":
        try:
            meta = json.loads((step.out / "meta.json").read_text())
            done = meta["embedded_now"] / max(1, meta["chunks"])
        except (OSError, ValueError, KeyError, TypeError):
            return
    share = achieved_share(work, rate, step.wall_s, done)
    if share is not None:
        record_share(rates_file(p.cache), share_key(rate.machine, work.kind, work.dtype or rate.dtype), share)


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
        # control ids differ from target ones: the same eval stage may serve both (sciq as either)
        cid = stage_key("condition", {"eval": step.key, "k": k, "method": method,
                                      **({"role": ev.role} if ev.role != "target" else {})})
        common = dict(model=ev.model, task=ev.task.task, method=method, k=k, shots=ev.shots,
                      paraphrases=ev.paraphrases, seed=ev.seed, metric=metric,
                      training_id=ev.train.key if ev.train else None, role=ev.role, target=ev.target)
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
                                tuple(s["logliks"]), tuple(s["retrieved"]), tuple(s.get("cited", ())), s.get("free")))
        store.put_condition(Condition(
            cid, status="done", n=r["n"], acc=r["acc"], acc_stderr=r["acc_stderr"], acc_norm=r["acc_norm"],
            acc_norm_stderr=r["acc_norm_stderr"], recall=quality.get(f"recall@{k}") if k else None,
            mrr=quality.get("mrr") if k else None, eval_s=r["seconds"], train_s=train_s,
            peak_rss_mb=max(peaks) if peaks else None, **common), rows)  # type: ignore[arg-type]
