"""The scorer against a plain full forward, batch-size invariance, metrics, and the eval CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinject.core.stats import mean_stderr
from kinject.lm.scoring import Scored, encode, predictions, score
from kinject.tasks.task import Prompt


def reference_logliks(model, tok, prompt: Prompt) -> list[float]:
    """Each choice scored alone: one full forward of context + continuation, full log-softmax."""
    ctx, conts = encode(tok, prompt, 512)
    out = []
    for cont in conts:
        with torch.inference_mode():
            logprobs = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        out.append(sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


SHARED = "The following are questions (with answers) about biology.\n\n" * 3

PROMPTS = [
    Prompt("Question: What is a cell?\nAnswer:", (" A", " B", " C"), ("A", "B", "C")),
    Prompt("Question: What makes ATP?\nAnswer:", (" mitochondria", " ribosome nucleus", " the golgi apparatus"),
           ("mitochondria", "ribosome nucleus", "the golgi apparatus")),
    Prompt("Question: trailing space? ", ("x", "membrane"), ("x", "membrane")),
    Prompt(SHARED + "Question: What is a cell?\nAnswer:", (" 1", " 2", " 3", " 4"), tuple("1234")),
    Prompt(SHARED + "Question: Which organelle?\nAnswer:", (" nucleus", " golgi apparatus"), ("nucleus", "golgi apparatus")),
    Prompt(SHARED + "Q: What is the basic unit of life?\nAnswer:", (" cell", " the basic unit"), ("cell", "the basic unit")),
    Prompt("", (" cell", " life"), ("cell", "life")),
]
GROUPS = [None, None, None, "bio", "bio", "bio", None]


def test_encode_moves_trailing_space_like_lm_eval(tiny_lm) -> None:
    _, tok = tiny_lm
    ctx, conts = encode(tok, Prompt("Answer: ", ("cell",), ("cell",)), 512)
    assert ctx == tok("Answer:")["input_ids"]
    assert conts[0] == tok("Answer: cell")["input_ids"][len(ctx):]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_scores_equal_a_full_forward_per_choice(tiny_lm, batch_size: int) -> None:
    model, tok = tiny_lm
    scored = score(model, tok, PROMPTS, GROUPS, batch_size=batch_size)
    for prompt, s in zip(PROMPTS, scored):
        ref = reference_logliks(model, tok, prompt)
        assert s.logliks == pytest.approx(ref, abs=2e-5), prompt.context
        assert len(s.greedy) == len(prompt.continuations)


def test_sliding_window_path_gives_the_same_scores(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models with sliding-window attention take the per-option KV-cache path; with a window
    wider than every prompt, the scores must equal the packed path's."""
    model, tok = tiny_lm
    packed = score(model, tok, PROMPTS, GROUPS, batch_size=4)
    monkeypatch.setattr(model.config, "sliding_window", 4096, raising=False)
    expanded = score(model, tok, PROMPTS, GROUPS, batch_size=4)
    for a, b in zip(packed, expanded):
        assert a.logliks == pytest.approx(b.logliks, abs=2e-5)


def test_is_greedy_matches_argmax_decoding(tiny_lm) -> None:
    model, tok = tiny_lm
    ctx = tok("Question: What is a cell?")["input_ids"]
    with torch.inference_mode():
        ids = list(ctx)
        for _ in range(3):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    greedy_text = tok.decode(ids[len(ctx):])
    prompt = Prompt("Question: What is a cell?", (greedy_text, " cell"), (greedy_text, "cell"))
    ctx_ids, conts = encode(tok, prompt, 512)
    if conts[0] == ids[len(ctx):]:  # the decoded text re-encodes to the same tokens
        assert score(model, tok, [prompt])[0].greedy[0] is True


def test_paired_bootstrap_ci() -> None:
    from kinject.core.stats import paired_bootstrap

    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 80 + [0.0] * 20
    g = paired_bootstrap(a, b)
    assert g["diff"] == pytest.approx(0.3)
    assert g["ci_low"] < 0.3 < g["ci_high"] and g["ci_low"] > 0.1
    assert paired_bootstrap(a, b) == g  # seeded
    same = paired_bootstrap(a, a)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0


def test_predictions_follow_lm_eval_argmax_and_norm() -> None:
    s = Scored((-2.0, -2.0, -9.0), (False, False, False))
    assert predictions(s, ("a", "bb", "cccccccccc")) == (0, 2)  # ties go to the first; -9/10 > -2/2
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, (1 / 3 / 4) ** 0.5))


@pytest.mark.slow
def test_real_model_batch_size_does_not_change_scores() -> None:
    from kinject.lm.backends import HFBackend
    from kinject.lm.scoring import evaluate
    from kinject.runtime.models import CPU, load_lm
    from kinject.tasks.registry import load_task

    model, tok = load_lm("smollm2-135m")
    for spec, shots in (("mmlu:anatomy", 5), ("sciq:support", 0), ("mmlu:astronomy@cloze", 0)):
        task = load_task(spec)
        runs = {bs: evaluate(HFBackend(model, tok, CPU, bs), task, shots, limit=12) for bs in (1, 8, 32)}
        for bs in (8, 32):
            assert [r.pred for r in runs[bs]] == [r.pred for r in runs[1]], (spec, bs)
            assert [r.pred_norm for r in runs[bs]] == [r.pred_norm for r in runs[1]], (spec, bs)
            for a, b in zip(runs[bs], runs[1]):
                assert a.logliks == pytest.approx(b.logliks, abs=1e-4)


@pytest.mark.slow
def test_matches_lm_evaluation_harness_per_choice(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from lmeval_bridge import Condition, export_condition, hflm, run_lm_eval

    from kinject.lm.backends import HFBackend
    from kinject.lm.scoring import evaluate
    from kinject.runtime.models import CPU, load_lm
    from kinject.tasks.registry import load_task
    from kinject.tasks.task import select

    model, tok = load_lm("smollm2-135m")
    lm = hflm(model, tok, 4)
    for cond in (Condition("mmlu:anatomy", 5), Condition("mmlu:astronomy@cloze", 0),
                 Condition("sciq:support", 0), Condition("sciq", 0)):
        task = load_task(cond.task)
        items = select(task, 6)
        ref = run_lm_eval(lm, export_condition(task, items, cond, tmp_path), tmp_path, cond.shots, 4)
        ours = evaluate(HFBackend(model, tok, CPU, 4), task, cond.shots, limit=6)
        for rec, theirs in zip(ours, ref.logliks):
            assert rec.logliks == pytest.approx(theirs, abs=1e-4), (cond, rec.id)
        assert sum(r.acc for r in ours) / len(ours) == pytest.approx(ref.acc, abs=1e-9)
        assert sum(r.acc_norm for r in ours) / len(ours) == pytest.approx(ref.acc_norm, abs=1e-9)


def _kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "kinject.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _one_line_error(proc: subprocess.CompletedProcess[str], expect: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], proc.stderr


def test_eval_cli_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "gold": 5}\n')
    _one_line_error(_kinject("eval", "--task", str(bad), "--out", "o1", cwd=tmp_path), f"{bad}:1: field 'gold'")
    _one_line_error(_kinject("eval", "--task", "mmlu:nope", "--out", "o2", cwd=tmp_path), "unknown MMLU subject 'nope'")
    _one_line_error(_kinject("eval", "--task", "sciq", "--dtype", "fp8", cwd=tmp_path), "--dtype must be one of auto, fp32, bf16, fp16")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    _one_line_error(_kinject("eval", "--task", "sciq", "--out", "full", cwd=tmp_path), "is not empty")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    _one_line_error(_kinject("eval", "--shots", "9", cwd=tmp_path), "Invalid value for '--shots'")
    _one_line_error(_kinject("eval", "--bogus", cwd=tmp_path), "No such option: --bogus")


@pytest.mark.slow
def test_eval_cli_writes_results_and_samples(tmp_path: Path) -> None:
    task = tmp_path / "mine.jsonl"
    task.write_text(json.dumps({"question": "What do plants absorb from the air?",
                                "choices": ["carbon dioxide", "helium", "gold"], "gold": 0}) + "\n")
    proc = _kinject("eval", "--task", "sciq", "--task", f"{task}@cloze", "--task", "mmlu:anatomy",
                    "--shots", "0", "--limit", "3", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["tasks"]) == {"sciq", f"{task}@cloze", "mmlu:anatomy"}
    assert results["tasks"]["sciq"]["n"] == 3
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples_sciq.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["logliks"]) == 4 and s["gold"] == 3 for s in samples)
    assert "sciq" in proc.stdout and "acc" in proc.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
