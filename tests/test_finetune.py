"""Packing, the training loop, resume-after-crash equality, LoRA, and bad options (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.runtime.hyper import TrainConfig
from kinject.train.finetune import pack, search_lr, train, write_job

TEXTS = [f"Fact {i}: the organelle number {i} makes protein {i * 7} in the cell membrane." for i in range(40)]
CFG = TrainConfig(lr=1e-3, epochs=2, block_size=32, micro_batch=2, batch=4, save_every=2,
                  val_fraction=0.1, warmup_ratio=0.2)


@pytest.fixture(scope="module")
def tiny_dir(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> str:
    model, tok = tiny_lm
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_pack_marks_every_text_with_bos_eos(tiny_lm) -> None:
    _, tok = tiny_lm
    blocks = pack(["a cell", "the membrane"], tok, 4)
    stream = [t for b in blocks for t in b]
    bos = tok.bos_token_id
    assert stream[0] == bos and stream.count(bos) >= 2  # <s> doubles as EOS for this tokenizer
    assert all(len(b) == 4 for b in blocks)


def test_training_lowers_loss_and_writes_a_loadable_model(tiny_dir: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    summary = train(tiny_dir, TEXTS, tmp_path / "run", CFG.model_copy(update=dict(epochs=3)))
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    assert [v["epoch"] for v in summary["val"]] == [1, 2, 3]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "run" / "checkpoint").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")


class Crash(Exception):
    pass


def test_a_crash_in_epoch_two_resumes_to_the_same_loss_curve(tiny_dir: str, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    reference = train(tiny_dir, TEXTS, tmp_path / "ref", CFG, progress=lambda done, total: calls.append((done, total)))
    ref_log = (tmp_path / "ref" / "log.jsonl").read_text()
    total = reference["steps"]
    assert calls == [(step, total) for step in range(total + 1)]  # the progress bar: start, then every step

    def crash(done: int, total: int) -> None:
        if done > total // CFG.epochs and done % CFG.save_every == 1:
            raise Crash  # epoch 2, one step after a checkpoint: that step is lost and must be replayed

    with pytest.raises(Crash):
        train(tiny_dir, TEXTS, tmp_path / "run", CFG, progress=crash)
    assert (tmp_path / "run" / "checkpoint" / "trainer.json").is_file()
    assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(KinjectError, match="is not empty.*pass --resume"):
        train(tiny_dir, TEXTS, tmp_path / "run", CFG)
    with pytest.raises(KinjectError, match="another config"):
        train(tiny_dir, TEXTS, tmp_path / "run", CFG.model_copy(update=dict(lr=2e-3)), resume=True)
    with pytest.raises(KinjectError, match="training data"):
        train(tiny_dir, TEXTS[:-1], tmp_path / "run", CFG, resume=True)
    # how often checkpoints are written may change on resume: the loss curve cannot depend on it
    resumed = train(tiny_dir, TEXTS, tmp_path / "run", CFG.model_copy(update=dict(save_every=CFG.save_every + 1)), resume=True)
    got = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in ref_log.splitlines()]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], abs=1e-5)


def test_lora_and_lr_search(tiny_dir: str, tmp_path: Path) -> None:
    summary = search_lr(tiny_dir, TEXTS, tmp_path / "search", CFG.model_copy(update=dict(method="lora", lora_r=4)), [1e-4, 3e-3])
    assert summary["best_lr"] in (1e-4, 3e-3)
    assert summary["runs"][f"{summary['best_lr']:g}"] == min(summary["runs"].values())
    assert (tmp_path / "search" / "lr-0.0001" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "search" / "model" / "config.json").is_file()
    with pytest.raises(KinjectError, match="not empty.*--resume"):  # never mistakes old runs for this one's
        search_lr(tiny_dir, TEXTS, tmp_path / "search", CFG.model_copy(update=dict(method="lora", lora_r=4)), [1e-4, 3e-3])
    again = search_lr(tiny_dir, TEXTS, tmp_path / "search", CFG.model_copy(update=dict(method="lora", lora_r=4)), [1e-4, 3e-3],
                      resume=True)
    assert again == summary  # every learning rate had finished: nothing is retrained
    with pytest.raises(KinjectError, match="holds out none"):
        search_lr(tiny_dir, TEXTS[:1], tmp_path / "one", CFG, [1e-4, 3e-3])


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.0}, "--lr must be positive"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"block_size": 4096}, "beyond the model context (512 tokens)"),
])
def test_bad_options(tiny_dir: str, tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(KinjectError, match=message.replace("(", "\\(").replace(")", "\\)")):
        train(tiny_dir, TEXTS, tmp_path / "bad", CFG.model_copy(update=dict(**change)))


def test_finetune_cli_bad_input(tiny_dir: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kinject.cli.main", "finetune", *args], capture_output=True,
                              text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    for args, expect in ((["--corpus", "nope", "--out", "o"], "nope is not a corpus folder"),
                         (["--corpus", "nope", "--out", "o", "--lr", "fast"], "--lr must be a number"),
                         (["--corpus", "nope", "--out", "o", "--method", "qlora"], "--method must be full or lora")):
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1 and expect in proc.stderr
    assert not (tmp_path / "o").exists()
    # the entry point `accelerate launch -m kinject.train.finetune JOB OUT` runs: an input error is one line too
    write_job(tmp_path / "job.json", tiny_dir, TEXTS, CFG.model_copy(update=dict(block_size=4096)), [1e-3])
    proc = subprocess.run([sys.executable, "-m", "kinject.train.finetune", "job.json", "o"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --block-size 4096 is beyond the model context (512 tokens)"]


@pytest.mark.slow
def test_same_command_runs_under_accelerate_launch_with_two_processes(tiny_dir: str, tiny_lm, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from kinject.knowledge.corpus import Document, build_corpus

    _, tok = tiny_lm
    build_corpus([Document(str(i), "t", t) for i, t in enumerate(TEXTS)], tok, tmp_path / "kb", max_tokens=64,
                 min_tokens=1)
    launcher = str(Path(sys.executable).parent / "accelerate")
    # --multi_gpu starts the 2 processes (torchrun); without CUDA they train over gloo (--cpu would start one)
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kinject.cli.main", "finetune",
                           "--model", tiny_dir, "--corpus", str(tmp_path / "kb"), "--out", str(tmp_path / "ddp"),
                           "--epochs", "2", "--block-size", "32", "--batch", "8", "--micro-batch", "2",
                           "--lr", "1e-3"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert [v["epoch"] for v in summary["val"]] == [1, 2] and summary["val"][1]["val_loss"] < summary["val"][0]["val_loss"]
    assert summary["processes"] == 2  # a real 2-process (gloo) run, not one process
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()


def test_a_bf16_fine_tune_then_an_fp32_one_in_one_process() -> None:
    """Accelerate fixes a process's precision once set; each fine-tune starts its own, so a run (or
    a test session) may train in bf16 and then in fp32."""
    from kinject.runtime.hyper import TrainConfig
    from kinject.train.finetune import _accelerator

    _accelerator(TrainConfig(lr=1e-4, bf16=True, device="cpu"))
    assert _accelerator(TrainConfig(lr=1e-4, bf16=False, device="cpu")).mixed_precision == "no"


def test_compiled_training_matches_eager_and_resumes(tiny_dir: str, tmp_path: Path) -> None:
    """`compile` (torch.compile through Accelerate) changes how the steps run, not what they learn:
    the loss curve equals the eager one to rounding, the saved model has plain weight names, a
    crashed compiled run resumes to its own curve, and an eager run's folder refuses a compiled resume."""
    from transformers import AutoModelForCausalLM

    eager = train(tiny_dir, TEXTS, tmp_path / "eager", CFG)
    compiled_cfg = CFG.model_copy(update=dict(compile=True))
    compiled = train(tiny_dir, TEXTS, tmp_path / "compiled", compiled_cfg)
    curve = [json.loads(x)["loss"] for x in (tmp_path / "compiled" / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    ref = [json.loads(x)["loss"] for x in (tmp_path / "eager" / "log.jsonl").read_text().splitlines()
           if "loss" in json.loads(x)]
    assert curve == pytest.approx(ref, rel=1e-3) and compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-3)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "compiled" / "model")
    assert not any("_orig_mod" in k for k in model.state_dict())

    def crash(done: int, total: int) -> None:
        if done == total - 1:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_dir, TEXTS, tmp_path / "run", compiled_cfg, progress=crash)
    with pytest.raises(KinjectError, match="another config"):
        train(tiny_dir, TEXTS, tmp_path / "run", CFG, resume=True)
    resumed = train(tiny_dir, TEXTS, tmp_path / "run", compiled_cfg, resume=True)
    assert resumed["final_loss"] == pytest.approx(compiled["final_loss"], abs=1e-5)


def test_compile_is_an_option_keyed_only_when_on() -> None:
    """`--compile` is in `kinject finetune --help`; an eager run's key and resume identity are what they
    were before the setting existed (no `compile` in them), a compiled run's differ."""
    from typer.testing import CliRunner

    from kinject.cli.main import app

    shown = " ".join(CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--compile" in shown and "torch.compile" in shown
    eager, compiled = CFG.keyed({"save_every"}), CFG.model_copy(update=dict(compile=True)).keyed({"save_every"})
    assert "compile" not in eager and "save_every" not in eager and compiled == {**eager, "compile": True}
