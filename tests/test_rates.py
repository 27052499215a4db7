"""The cost model learns this machine's speeds: each computed stage records the share of the matmul
peak it reached, keyed by machine, kind of work and dtype; estimates use the median of the newest."""

from __future__ import annotations

import io
import json
import sqlite3
import statistics
from pathlib import Path

import pytest
from rich.console import Console
from workspace import write_project

from kinject.experiment.config import load_config
from kinject.experiment.planning import estimate_steps, plan, print_plan
from kinject.experiment.run import _learn, run
from kinject.runtime import costs
from kinject.runtime.costs import (
    EFFICIENCY,
    KEEP,
    RATES_FILE,
    UTILISATION,
    Throughput,
    Work,
    achieved_share,
    efficiency,
    estimate,
    load_rates,
    measured_share,
    param_count,
    rates_file,
    record_share,
    share_key,
)

PEAK = 1e11
"""The matmul peak the tests pin (`matmul_flops` measures noise otherwise)."""


@pytest.fixture
def model(tmp_path: Path) -> str:
    """A Mistral-7B-shaped config folder: the cost model counts its parameters without weights."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000}))
    return str(tmp_path / "m")


def _rate(table: dict, machine: str | None = "box", dtype: str = "fp32") -> Throughput:
    return Throughput(PEAK * UTILISATION, "", machine, dtype, table)


def test_recorded_shares_are_looked_up_as_the_median_of_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "cache" / RATES_FILE
    key = share_key("box", "score", "fp32")
    for share in (0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.6):  # the two oldest fall out
        record_share(path, key, share)
    table = load_rates(path)
    assert table == {key: [0.1, 0.2, 0.3, 0.4, 0.6]} and KEEP == 5
    assert measured_share(table, key) == (pytest.approx(0.3), 5)
    assert measured_share(table, share_key("box", "train", "fp32")) is None
    assert not list(path.parent.glob(".tmp-*"))  # written whole, through a renamed temporary file
    assert rates_file(tmp_path / "cache") == path


def test_the_estimate_follows_the_measured_share(model: str) -> None:
    n = param_count(model)
    assert n is not None
    work = Work("score", model, 1e6)
    nominal = estimate(work, _rate({}))
    assert nominal.share is not None and nominal.share.source == "nominal"
    assert nominal.seconds == pytest.approx(2 * n * 1e6 / (PEAK * UTILISATION))
    table = {share_key("box", "score", "fp32"): [0.1, 0.25, 0.2]}
    measured = estimate(work, _rate(table))
    assert measured.seconds == pytest.approx(2 * n * 1e6 / (PEAK * 0.2))  # the median, not the mean
    assert measured.share is not None and (measured.share.source, measured.share.observations) == ("measured", 3)
    assert measured.share.describe() == "20% of the matmul peak, measured over 3 stages on this machine"
    # two launched processes split the same work: half the wall time, same share
    assert estimate(Work("score", model, 1e6, processes=2), _rate(table)).seconds == pytest.approx(
        measured.seconds / 2)
    # another machine's shares, or a device not on this machine (nominal rate), do not apply
    assert estimate(work, _rate(table, machine="other")).seconds == pytest.approx(nominal.seconds)
    assert estimate(work, _rate(table, machine=None)).seconds == pytest.approx(nominal.seconds)


def test_shares_are_keyed_by_kind_and_dtype_separately(model: str) -> None:
    table = {share_key("box", "score", "fp32"): [0.4], share_key("box", "train", "fp32"): [0.1],
             share_key("box", "train", "bf16"): [0.35]}
    fp32, bf16 = _rate(table), _rate(table, dtype="bf16")
    assert efficiency(Work("score", model, 1), fp32).value == 0.4
    assert efficiency(Work("train", model, 1), fp32).value == 0.1
    assert efficiency(Work("train", model, 1, dtype="bf16"), bf16).value == 0.35
    # none measured for embedding: nominal; none for bf16 training on another machine: the reference
    assert efficiency(Work("embed", model, 1), fp32).value == UTILISATION
    other = efficiency(Work("train", model, 1, dtype="bf16"), _rate(table, machine="other", dtype="bf16"))
    assert (other.value, other.source) == (EFFICIENCY["train", "bf16"], "reference")
    # a bf16 stage planned at the bf16 rate: 6·N·tokens over peak × 35%
    n = param_count(model)
    assert n is not None
    assert estimate(Work("train", model, 1e6, dtype="bf16"), bf16).seconds == pytest.approx(
        6 * n * 1e6 / (PEAK * 0.35))


def test_a_corrupt_or_odd_rates_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / RATES_FILE
    assert load_rates(path) == {}  # missing
    for text in ("{not json", "[1, 2]", '{"shares": 3}', '{"other": {}}', "\x00\x01"):
        path.write_text(text)
        assert load_rates(path) == {}, text
    path.write_text(json.dumps({"shares": {"a": [0.2, "x", 1.5, -1, None, True, 0.4], "b": ["y"], "c": 0.3}}))
    assert load_rates(path) == {"a": [0.2, 0.4]}  # what is not a share in (0, 1] is dropped
    path.write_text("{broken")
    record_share(path, "k", 0.25)  # a corrupt file is replaced by a valid one, not a crash
    assert load_rates(path) == {"k": [0.25]}
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    record_share(blocked / RATES_FILE, "k", 0.3)  # cannot be written: skipped, no error


def test_only_stages_long_enough_and_in_one_process_are_recorded(model: str) -> None:
    n = param_count(model)
    assert n is not None
    work, rate = Work("score", model, 1e6), _rate({})
    assert achieved_share(work, rate, 5.0) is None  # under MIN_WALL_S: start-up would dominate
    assert achieved_share(work, rate, 2 * n * 1e6 / PEAK / 0.3) == pytest.approx(0.3)
    assert achieved_share(work, rate, 2 * n * 1e6 / PEAK / 0.3, done=0.5) == pytest.approx(0.15)
    assert achieved_share(work, rate, 20.0, done=0.0) is None  # everything was cached
    assert achieved_share(Work("score", model, 1e6, processes=2), rate, 100.0) is None  # launched
    assert achieved_share(work, _rate({}, machine=None), 100.0) is None  # a nominal rate
    assert achieved_share(Work("score", model, 1e12), rate, 20.0) is None  # above the peak: a partial stage
    assert achieved_share(Work("score", "no-size-here", 1e6), rate, 20.0) is None


@pytest.fixture
def project(tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny grid of test_experiment (tiny LM, 6 facts), with the matmul peak pinned."""
    monkeypatch.setattr(costs, "matmul_flops", lambda placement, *a, **k: PEAK)
    return write_project(tmp_path, tiny_lm)


def test_learn_records_a_long_stage_and_skips_a_short_one(project: Path) -> None:
    console = Console(file=io.StringIO())
    p = plan(load_config(project / "tiny.yaml"), project / "cache", console)
    estimates = estimate_steps(p)
    step = next(s for s in p.steps if s.kind == "eval")
    step.status, step.wall_s = "computed", 5.0
    _learn(p, step, step.work)
    assert not (project / "cache" / RATES_FILE).exists()
    step.wall_s = 20.0
    _learn(p, step, step.work)
    rate = p.rates["fp32"]
    assert rate.machine is not None and rate.machine.startswith("cpu · ")
    flops = estimates[step.key].flops
    assert flops is not None
    assert load_rates(project / "cache" / RATES_FILE) == {
        share_key(rate.machine, "score", "fp32"): [pytest.approx(flops / 20.0 / PEAK)]}


def test_a_run_teaches_the_plan_its_speeds(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: `kinject run` records each computed stage's share (the tiny stages are short, so
    the threshold is lowered), and the next plan estimates at their median and says so."""
    monkeypatch.setattr(costs, "MIN_WALL_S", 0.0)
    console = Console(file=io.StringIO())
    cache = project / "cache"
    summary = run(project / "tiny.yaml", project / "run", cache, console, report=False)
    assert summary.failed == [] and summary.computed == 5
    table = load_rates(cache / RATES_FILE)
    p = plan(load_config(project / "tiny.yaml"), cache, console)
    estimates = estimate_steps(p)
    machine = p.rates["fp32"].machine
    assert machine is not None
    score = share_key(machine, "score", "fp32")
    assert any(k.startswith(machine) and " · train · " in k for k in table)
    # the two eval stages' shares: their FLOPs (counted on the built corpus) over their wall time
    db = sqlite3.connect(project / "run" / "results.sqlite")
    wall = dict(db.execute("SELECT key, wall_s FROM stages WHERE kind = 'eval'").fetchall())
    db.close()
    evals = [s for s in p.steps if s.kind == "eval"]
    expected = [estimates[s.key].flops / wall[s.key] / PEAK for s in evals]  # type: ignore[operator]
    assert sorted(table[score]) == pytest.approx(sorted(expected))
    # the next plan: the eval stages at the median share, not the nominal 50%
    median = statistics.median(expected)
    for s in evals:
        assert s.estimate_s == pytest.approx(estimates[s.key].flops / (PEAK * median))  # type: ignore[operator]
    out = io.StringIO()
    print_plan(p, Console(file=out, width=250))
    assert f"score fp32: {median:.0%} of the matmul peak, measured over 2 stages on this machine" in out.getvalue()


def test_init_designs_on_the_shares_measured_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kinject init`'s budget planner reads the default stage cache's rates file and costs its
    design with the same `estimate`: a machine measured slower at scoring gets fewer questions."""
    from kinject.experiment.kbinit import Costs, Survey, design, stratified
    from kinject.knowledge.corpus import Chunk, Repeats
    from kinject.knowledge.readers import Tally
    from kinject.runtime.devices import resolve
    from kinject.tasks.task import Item

    monkeypatch.setattr(costs, "matmul_flops", lambda placement, *a, **k: PEAK)
    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    (tmp_path / "lm").mkdir()  # SmolLM2-135M's shape
    (tmp_path / "lm" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}))
    chunks = [Chunk(f"c{d}-{i}", f"doc{d}", f"Doc {d}", f"text {d} {i}", 200, 0, 10)
              for d in range(40) for i in range(20)]
    items = [Item(f"q-{c.id}", "q", ("a", "b", "c", "d"), 0, subject="year", source_chunks=(c.id,)) for c in chunks]
    s = Survey(Tally(), 40, chunks, Repeats())
    ordered = stratified(items, chunks)
    placement = resolve("cpu", "fp32")
    nominal = Costs(s, str(tmp_path / "lm"), "no-embedder", placement, False)
    assert rates_file() == tmp_path / "home" / "stages" / RATES_FILE
    record_share(rates_file(), share_key(costs.machine(placement), "score", "fp32"), 0.25)
    measured = Costs(s, str(tmp_path / "lm"), "no-embedder", placement, False)
    assert measured.score(100) == pytest.approx(nominal.score(100) * UTILISATION / 0.25)
    assert measured.train(50) == pytest.approx(nominal.train(50))  # no training measured: nominal still
    (n_nominal, _), (n_measured, _) = (design(s, ordered, c, 30) for c in (nominal, measured))
    assert n_measured < n_nominal
    assert measured.total(n_measured, 50) <= 30 * 60


def test_a_compiled_fine_tune_is_not_learnt_from(project: Path) -> None:
    """A compiled fine-tune's time holds the compile and its rate is not the eager one: not recorded
    (an eager one of the same length is)."""
    console = Console(file=io.StringIO())
    p = plan(load_config(project / "tiny.yaml"), project / "cache", console)
    estimate_steps(p)
    step = next(s for s in p.steps if s.kind == "finetune")
    step.status, step.wall_s = "computed", 20.0
    p.cfg.finetune.compile = True
    _learn(p, step, step.work)
    assert not (project / "cache" / RATES_FILE).exists()
    p.cfg.finetune.compile = False
    _learn(p, step, step.work)
    assert list(load_rates(project / "cache" / RATES_FILE)) == [share_key(p.rates["fp32"].machine, "train", "fp32")]


def test_a_plan_takes_the_better_of_two_peak_readings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A busy moment on a shared machine only lowers a reading: init reads the peak before the
    documents and again when it plans, and the better reading counts, in both precisions."""
    from kinject.experiment.kbinit import Costs, Survey, peaks
    from kinject.knowledge.corpus import Chunk, Repeats
    from kinject.knowledge.readers import Tally
    from kinject.runtime.devices import resolve

    placement = resolve("cpu", "fp32")
    monkeypatch.setattr(costs, "matmul_flops", lambda placement, *a, **k: PEAK / 2)  # busy now
    early = costs.throughput(placement, True, {}, earlier=PEAK)
    assert early.peak == pytest.approx(PEAK) and "best of two readings" in early.what
    busy_then = costs.throughput(placement, True, {}, earlier=PEAK / 4)
    assert busy_then.peak == pytest.approx(PEAK / 2) and "measured now" in busy_then.what
    monkeypatch.setattr("kinject.runtime.devices.matmul_flops", lambda p, *a, **k: PEAK * (3 if p.dtype == "bf16" else 1))
    assert peaks(placement, True) == {"fp32": PEAK, "bf16": 3 * PEAK} and peaks(placement, False) == {"fp32": PEAK}
    s = Survey(Tally(), 1, [Chunk("c", "d", "D", "text", 200, 0, 1)], Repeats())
    c = Costs(s, "smollm2-135m", "no-embedder", placement, True, {}, earlier=peaks(placement, True))
    assert c.rate.peak == pytest.approx(PEAK) and c.train_rate.peak == pytest.approx(3 * PEAK)
