"""Prompt distillation and knowledge modules (kinject.train.distill, `distill` and `kmodule` methods):
the KL and hidden-state losses, the teacher's cached targets aligned with the student's answer
tokens, bad settings refused at config time, and whole tiny runs where the teacher stage is
computed once for every distilled student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from workspace import config, write_facts

from kinject.core.errors import KinjectError
from kinject.train.distill import Objective, distill_loss, hidden_loss, kl_loss, teacher_answers, teacher_targets
from kinject.train.finetune import IGNORE, encode_examples


def test_kl_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5]])  # positions 1..3 predict the answer tokens
    top = logits[0, 1:4].topk(11)
    same = [(top.indices.to(torch.int32), top.values.to(torch.float16))]
    assert kl_loss(logits, labels, same, 1.0).abs() < 1e-3
    other = logits.clone().requires_grad_(True)
    shifted = [(top.indices.to(torch.int32), (top.values.flip(-1)).to(torch.float16))]
    loss = kl_loss(other, labels, shifted, 2.0)
    loss.backward()
    assert loss > 0.1 and other.grad is not None and other.grad[0, 1:4].abs().sum() > 0
    assert other.grad[0, 0].abs().sum() == 0 and other.grad[0, 4].abs().sum() == 0  # only answer positions
    with pytest.raises(KinjectError, match="teacher tokens"):
        kl_loss(logits, labels, [(top.indices[:2].to(torch.int32), top.values[:2].half())], 1.0)


def test_the_losses_run_under_bf16_autocast(tiny_lm) -> None:
    """Training in bf16 autocasts the loss too: the cached fp16 teacher tensors must not reach an
    autocast op as fp16 (torch refuses the mix on the CPU)."""
    model, tok = tiny_lm
    n = model.config.num_hidden_layers
    examples = [("Question: Who?\nAnswer:", "Ada wrote it.\n\nQuestion: Who?\nAnswer:", " Ada Lovelace")]
    targets = teacher_targets(model, tok, examples, top_k=5, layers=(1, n))
    [(ids, labels)] = encode_examples([(examples[0][0], examples[0][2])], tok, 512)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = distill_loss(model, torch.tensor([ids]), torch.tensor([labels]), targets, Objective(1.0, (1, n), 1.0))
    assert torch.isfinite(loss) and loss > 0


def test_teacher_targets_cover_the_students_answer_tokens(tiny_lm) -> None:
    model, tok = tiny_lm
    examples = [("Question: Who?\nAnswer:", "Passage about Ada.\n\nQuestion: Who?\nAnswer:", " Ada Lovelace")]
    [(idx, val)] = teacher_targets(model, tok, examples, top_k=7)
    [(ids, labels)] = encode_examples([(examples[0][0], examples[0][2])], tok, 512)
    assert idx.shape == val.shape == (sum(x != IGNORE for x in labels), 7)
    assert idx.dtype == torch.int32 and val.dtype == torch.float16
    long = [("Q", "word " * 5000, " A")]
    with pytest.raises(KinjectError, match="beyond the model's"):
        teacher_targets(model, tok, long, top_k=3)


def test_a_knowledge_modules_teacher_keeps_its_hidden_states_and_the_student_is_pulled_to_them(tiny_lm) -> None:
    model, tok = tiny_lm
    n = model.config.num_hidden_layers
    examples = [("Question: Who?\nAnswer:", "Question: Who?\nAnswer:", " Ada Lovelace")]  # teacher = student
    [(idx, val, hidden)] = teacher_targets(model, tok, examples, top_k=7, layers=tuple(range(1, n + 1)))
    [(ids, labels)] = encode_examples([(examples[0][0], examples[0][2])], tok, 512)
    answer_tokens = sum(x != IGNORE for x in labels)
    assert hidden.shape == (answer_tokens, n, model.config.hidden_size) and hidden.dtype == torch.float16
    ids_t, labels_t = torch.tensor([ids]), torch.tensor([labels])
    out = model(input_ids=ids_t, output_hidden_states=True)
    layers = tuple(range(1, n + 1))
    assert hidden_loss(out.hidden_states, labels_t, [(idx, val, hidden)], layers) < 2e-3  # itself: ~0 (fp16)
    # another teacher's states: the term is positive, and the gradient reaches the student's weights
    other = [(idx, val, hidden + torch.randn_like(hidden.float()).half())]
    model.zero_grad()
    loss = distill_loss(model, ids_t, labels_t, other, Objective(1.0, layers, 1.0))
    kl_only = distill_loss(model, ids_t, labels_t, other, Objective(1.0, (), 1.0))
    assert loss > kl_only + 0.1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_the_teacher_can_supply_its_own_answer(tiny_lm) -> None:
    model, tok = tiny_lm
    examples = [("Question: Who?\nAnswer:", "Ada wrote it.\n\nQuestion: Who?\nAnswer:", " Ada")]
    [(student, teacher, answer)] = teacher_answers(model, tok, examples, max_tokens=4)
    assert (student, teacher) == examples[0][:2] and answer.startswith(" ") and "\n" not in answer
    [(idx, _)] = teacher_targets(model, tok, [(student, teacher, answer)], top_k=5)
    assert idx.shape[0] == len(tok(answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def _project(tiny_lm, root: Path, methods: str, extra: str = "") -> Path:
    model, tok = tiny_lm
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    write_facts(root)
    text = config("tiny").replace("methods: [base, rag, ft, ft+rag]", f"methods: [{methods}]")
    text = text.replace("  val_fraction: 0\n", "  val_fraction: 0\n  pairs: cloze\n  pairs_per_chunk: 2\n" + extra)
    (root / "tiny.yaml").write_text(text)
    return root / "tiny.yaml"


def test_bad_distill_settings_fail_at_config_time(tiny_lm, tmp_path: Path) -> None:
    from kinject.experiment.config import load_config

    path = _project(tiny_lm, tmp_path, "base, distill", "  distill:\n    temperature: 0\n")
    with pytest.raises(KinjectError, match="temperature"):
        load_config(path)
    path = _project(tiny_lm, tmp_path, "base, distill+replay")
    with pytest.raises(KinjectError):
        load_config(path)
    path = _project(tiny_lm, tmp_path, "base, kmodule", "  distill:\n    layers: [0, 1]\n")
    with pytest.raises(KinjectError, match="layers"):
        load_config(path)
    path = _project(tiny_lm, tmp_path, "base, kmodule+replay")
    with pytest.raises(KinjectError, match="replay"):
        load_config(path)


def test_a_hidden_layer_beyond_the_model_fails_before_any_stage_runs(tiny_lm, tmp_path: Path) -> None:
    from kinject.experiment.run import run

    model, _ = tiny_lm
    n = model.config.num_hidden_layers
    path = _project(tiny_lm, tmp_path, "base, kmodule", f"  distill:\n    layers: [1, {n + 1}]\n")
    with pytest.raises(KinjectError, match=rf"layers: {n + 1} is out of range; the model has {n} layers"):
        run(path, tmp_path / "run", tmp_path / "cache", Console(quiet=True), report=False)
    assert not (tmp_path / "cache" / "teacher").exists()


def test_a_tiny_run_distils_with_one_cached_teacher(tiny_lm, tmp_path: Path) -> None:
    from kinject.eval.results import Store
    from kinject.experiment.run import run

    path = _project(tiny_lm, tmp_path, "base, rag, distill, distill+rag, distill-lora",
                    "  distill:\n    target: teacher\n")
    result = run(path, tmp_path / "run", tmp_path / "cache", Console(quiet=True), report=False)
    assert not result.failed, result.failed
    teachers = list((tmp_path / "cache" / "teacher").glob("*/targets.pt"))
    assert len(teachers) == 1  # the full and the LoRA student share one teacher stage
    rows = json.loads((teachers[0].parent / "examples.json").read_text())
    assert rows and all(prompt.endswith("Answer:") and answer.startswith(" ") for prompt, answer in rows)
    with Store(tmp_path / "run") as store:
        methods = {(c.method, c.k) for c in store.conditions() if c.status == "done"}
    assert {("distill", 0), ("distill+rag", 1), ("distill-lora", 0)} <= methods
    logs = [json.loads(line) for p in (tmp_path / "cache" / "finetune").glob("*/log.jsonl")
            for line in p.read_text().splitlines()]
    assert logs and all(r["loss"] >= 0 for r in logs if "loss" in r)


def test_a_tiny_run_trains_a_knowledge_module_beside_prompt_distillation(tiny_lm, tmp_path: Path) -> None:
    from kinject.eval.results import Store
    from kinject.experiment.run import run

    path = _project(tiny_lm, tmp_path, "base, distill-lora, kmodule, kmodule+rag", "  distill:\n    layers: [1]\n")
    result = run(path, tmp_path / "run", tmp_path / "cache", Console(quiet=True), report=False)
    assert not result.failed, result.failed
    teachers = sorted((tmp_path / "cache" / "teacher").glob("*/targets.pt"))
    assert len(teachers) == 2  # the knowledge module's teacher keeps hidden states: a stage of its own
    deep = [t.parent for t in teachers if (t.parent / "layers.json").is_file()]
    assert len(deep) == 1 and json.loads((deep[0] / "layers.json").read_text()) == [1]
    with Store(tmp_path / "run") as store:
        methods = {(c.method, c.k) for c in store.conditions() if c.status == "done"}
    assert {("kmodule", 0), ("kmodule+rag", 1), ("distill-lora", 0)} <= methods
    states = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "finetune").glob("*/state.json")]
    assert any(s.get("distill", {}).get("layers") == [1] for s in states)
