"""Run lm-evaluation-harness on exactly the questions kinject scores, using lm-eval's own prompts.

Shared by `lm_eval_parity.py` and `scoring_speed.py`. The task YAMLs are lm-eval's installed
templates (`mmlu/default`, `mmlu/continuation`, `sciq`) with only the data source swapped for
local JSONL exports of kinject's items, so any prompt difference would show up as a mismatch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import logging  # noqa: E402

import yaml  # noqa: E402

logging.getLogger("lm_eval").setLevel(logging.ERROR)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from kinject.tasks.task import Item, Task  # noqa: E402


@dataclass(frozen=True)
class Condition:
    task: str  # kinject task spec, e.g. "mmlu:anatomy@cloze"
    shots: int

    @property
    def label(self) -> str:
        return f"{self.task} {self.shots}-shot"


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _load_yaml(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    if "include" in cfg:
        base = _load_yaml(path.parent / cfg.pop("include"))
        base.update(cfg)
        cfg = base
    for key in ("tag", "group", "task_alias"):
        cfg.pop(key, None)
    return cfg


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def export_condition(task: Task, items: list[Item], cond: Condition, folder: Path) -> str:
    """Write the items as JSONL and an lm-eval task YAML over them; returns the lm-eval task name."""
    name = "kinject_" + "".join(c if c.isalnum() else "_" for c in cond.label)
    tasks_dir = _lm_eval_tasks_dir()
    data = folder / f"{name}.jsonl"
    if task.style == "mmlu":
        subjects = sorted({it.subject for it in items})
        assert len(subjects) == 1, "export one MMLU subject per condition"
        subject = subjects[0]
        family = "default" if task.fmt == "mc" else "continuation"
        cfg = _load_yaml(tasks_dir / "mmlu" / family / f"mmlu_{subject}.yaml")
        _write_jsonl(data, [{"question": it.question, "subject": it.subject, "choices": list(it.choices),
                             "answer": it.gold} for it in items])
        dev = folder / f"{name}_dev.jsonl"
        _write_jsonl(dev, [{"question": it.question, "subject": it.subject, "choices": list(it.choices),
                            "answer": it.gold} for it in task.dev if it.subject == subject])
        cfg.update(dataset_path="json", dataset_kwargs={"data_files": {"test": str(data), "dev": str(dev)}})
        cfg.pop("dataset_name", None)
        cfg["metric_list"] = [{"metric": "acc"}, {"metric": "acc_norm"}]
    else:
        cfg = _load_yaml(tasks_dir / "sciq" / "sciq.yaml")
        _write_jsonl(data, [{"question": it.question, "distractor1": it.choices[0], "distractor2": it.choices[1],
                             "distractor3": it.choices[2], "correct_answer": it.choices[3],
                             "support": it.passage or ""} for it in items])
        cfg.update(dataset_path="json", dataset_kwargs={"data_files": {"validation": str(data)}},
                   validation_split="validation")
        for key in ("training_split", "test_split", "dataset_name"):
            cfg.pop(key, None)
        if items[0].passage is None:  # closed-book: lm-eval's sciq prompt without the support
            cfg["doc_to_text"] = "Question: {{question}}\nAnswer:"
    cfg["task"] = name
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


@dataclass
class LmEvalRun:
    logliks: list[tuple[float, ...]]
    acc: float
    acc_norm: float
    seconds: float


def run_lm_eval(lm, task_name: str, folder: Path, shots: int, batch_size: int) -> LmEvalRun:
    """Evaluate one exported task with an already-loaded `HFLM` and time only the evaluation."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder))
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task_name], num_fewshot=shots, batch_size=batch_size,
                                  log_samples=True, task_manager=manager, bootstrap_iters=0)
    seconds = time.perf_counter() - started
    samples = sorted(out["samples"][task_name], key=lambda s: s["doc_id"])
    logliks = [tuple(float(r[0]) for r in s["filtered_resps"]) for s in samples]
    res = out["results"][task_name]
    return LmEvalRun(logliks, res["acc,none"], res["acc_norm,none"], seconds)


def hflm(model, tok, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)


def prepare(spec: str, limit: int | None, folder: Path):
    """A "TASK:SHOTS" spec → (condition, kinject task, its selected items, exported lm-eval task name)."""
    from kinject.tasks.registry import load_task
    from kinject.tasks.task import select

    task_spec, _, shots = spec.rpartition(":")
    cond = Condition(task_spec, int(shots))
    task = load_task(cond.task)
    items = select(task, limit)
    return cond, task, items, export_condition(task, items, cond, folder)


def matmul_peak(dtype, n: int = 2048) -> float:
    """GFLOP/s of an n×n CPU matmul in `dtype`, measured now (`kinject.runtime.devices.matmul_flops`): the
    roofline for this run."""
    import torch

    from kinject.runtime.devices import Placement, matmul_flops

    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return matmul_flops(Placement("cpu", name), size=n) / 1e9


@contextlib.contextmanager
def profiled(on: bool, title: str, rows: int = 18):
    """When `on`, profile the CPU ops inside the block and print the busiest by self time."""
    if not on:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    print(f"\n--- where {title} spends its time (torch profiler, ops by self CPU time) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
