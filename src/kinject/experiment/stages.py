"""Stage builders: what each node of a run's graph computes, given its inputs and output folder.

corpus (read + chunk), index (embed + FAISS), paraphrase (a generator), pairs (training QA pairs:
offline cloze, a generator or a file), finetune (continued pre-training, SFT or RAFT, optionally
with replay text; in process or under a launcher) and eval (in process or data parallel under a
launcher). Each writes its
output folder atomically; `planning` decides which to run and with what.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from kinject import __version__
from kinject.core.errors import KinjectError
from kinject.eval.methods import DISTILLED
from kinject.experiment.config import Config, DistillConfig, FinetuneConfig, KBConfig
from kinject.runtime.devices import Placement


def build_corpus_stage(kb: KBConfig, sources: Sequence[str], tokenizer: str, out: Path) -> None:
    """Read a knowledge base's sources and chunk them into a corpus folder."""
    from kinject.knowledge.corpus import build_corpus
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.registry import read_source

    tok, context = load_tokenizer(tokenizer)
    docs = (d for s in sources for d in read_source(s, kb.topics, kb.titles, kb.keywords))
    build_corpus(docs, tok, out, max_tokens=kb.chunk_tokens, min_tokens=kb.min_tokens, small=kb.small,
                 tokenizer_ref=tokenizer, context_limit=context)


def build_index_stage(corpus: Path, embedder: str, kind: str, placement: Placement, context_header: bool | None,
                      out: Path) -> None:
    """Embed a corpus into an index folder."""
    from kinject.rag.retrieval import Embedder, build_index

    build_index(corpus, Embedder(embedder, placement=placement), out, kind,  # type: ignore[arg-type]
                context_header=context_header)


@dataclass(frozen=True)
class Selection:
    """The chunks fine-tuning uses: all (no sources), the questions' sources, or with `size` or
    `fraction` those sources plus a seeded random sample of the other chunks up to that many."""
    sources: tuple[str, ...] = ()
    size: int | None = None
    fraction: float | None = None
    seed: int = 0

    @property
    def sampled(self) -> bool:
        """Whether a random sample of other chunks is added to the sources."""
        return self.size is not None or self.fraction is not None

    def key(self) -> dict:
        """What a stage key holds of it: the sample, when there is one (the keys of the other
        modes stay as they were before sampling existed)."""
        return {"sample": [self.size, self.fraction, self.seed]} if self.sampled else {}

    def target(self, n_chunks: int) -> int:
        """How many chunks it picks from a knowledge base of `n_chunks`."""
        if not self.sampled:
            return len(self.sources) or n_chunks
        want = self.size if self.size is not None else round((self.fraction or 0) * n_chunks)
        return min(n_chunks, max(want, len(self.sources)))


def select_chunks(corpus: Path, selection: Selection, chunks: Sequence | None = None) -> list:
    """The chunks fine-tuning uses, in corpus order (`chunks`: the corpus, when the caller has
    read it already)."""
    import random

    from kinject.knowledge.corpus import read_chunks

    chunks = list(chunks) if chunks is not None else read_chunks(corpus)
    if not selection.sources and not selection.sampled:
        return chunks
    wanted = set(selection.sources)
    picked = [c for c in chunks if c.id in wanted or c.doc_id in wanted]
    if wanted and not picked:
        raise KinjectError(f"{corpus}: none of the questions' source chunks is in this knowledge base; "
                           f"use finetune.train_on: kb")
    if selection.sampled:
        have = {c.id for c in picked}
        others = [c.id for c in chunks if c.id not in have]
        extra = random.Random(selection.seed).sample(others, min(len(others), selection.target(len(chunks))
                                                                  - len(picked)))
        keep = have | set(extra)
        picked = [c for c in chunks if c.id in keep]
    return picked


def paraphrase_stage(corpus: Path, selection: Selection, generator: str, n: int, seed: int, placement: Placement,
                cache: Path, out: Path, console: Console) -> None:
    """The paraphrases of the chunks fine-tuning uses, as `kinject paraphrase` makes them."""
    from kinject.lm.generators import GeneratorOptions
    from kinject.synth.paraphrase import write_paraphrase_dir
    from kinject.synth.synthesis import Synthesis, paraphrase_chunks

    how = Synthesis(generator, cache / "paraphrase-cache.sqlite", seed,
                    GeneratorOptions(device=placement.device, dtype=placement.dtype))
    paraphrases, report = paraphrase_chunks(select_chunks(corpus, selection), how, n, console)
    if report.unfinished:  # never cache a stage the generator did not finish; finished rounds are cached
        raise KinjectError(f"{report.unfinished} paraphrase rounds got no reply from '{generator}' "
                           f"(endpoint errors: {report.generator_stats}); rerun to ask for those again")
    write_paraphrase_dir(out, paraphrases, report, {"generator": generator, "n": n, "seed": seed,
                                                    "corpus": str(corpus), "kinject_version": __version__})


def pairs_stage(corpus: Path, selection: Selection, spec: str, per_chunk: int, tasks: Sequence[str], seed: int,
                placement: Placement, cache: Path, out: Path, console: Console) -> None:
    """Training QA pairs for the chunks fine-tuning uses, as `kinject questions --pairs` makes them
    (or read from a pairs file); none states an evaluated question of `tasks`."""
    from kinject.core.fsio import atomic_dir
    from kinject.experiment.config import pairs_kind
    from kinject.knowledge.corpus import read_chunks
    from kinject.lm.generators import GeneratorOptions
    from kinject.synth.synthesis import Synthesis, training_pairs
    from kinject.synth.trainpairs import Evaluated, read_pairs, write_pairs

    evaluated = Evaluated.of_tasks(tasks)
    every = read_chunks(corpus)
    chunks = select_chunks(corpus, selection, every)
    if pairs_kind(spec) == "file":
        pairs = [p for p in read_pairs(Path(spec)) if not evaluated.leaks(p.question, p.answer)]
        report = {"kind": "pairs", "method": "file", "file": spec, "valid": len(pairs)}
    else:
        how = Synthesis(spec, cache / "pairs-cache.sqlite", seed,
                        GeneratorOptions(device=placement.device, dtype=placement.dtype))
        pairs, report = training_pairs(chunks, every, per_chunk, evaluated, how, console)
        if report.get("unfinished"):
            raise KinjectError(f"{report['unfinished']} chunks got no reply from '{spec}'; rerun to ask for those "
                               f"again")
    if not pairs:
        raise KinjectError(f"finetune.pairs '{spec}' gave no training pair for these {len(chunks)} chunks")
    atomic_dir(out, lambda tmp: write_pairs(tmp / "pairs.jsonl", pairs, {**report, "kinject_version": __version__}))


def _distill_examples(corpus: Path, pairs: Path, task: str) -> list[tuple[str, str, str]]:
    from kinject.knowledge.corpus import read_chunks
    from kinject.synth.trainpairs import read_pairs
    from kinject.tasks.registry import load_task
    from kinject.train.distill import distill_examples

    return distill_examples(load_task(task), read_pairs(pairs / "pairs.jsonl"), {c.id: c for c in read_chunks(corpus)})


def teacher_stage(model: str, corpus: Path, pairs: Path, task: str, distill: DistillConfig, placement: Placement,
                  out: Path, console: Console, hidden: bool = False) -> None:
    """Prompt distillation's teacher: the frozen model reading each pair's chunk, its top-k logits
    at every answer token (of the reference, or of its own greedy answer) and, for a knowledge
    module (`hidden`), its hidden states there at `distill.layers` (None: every block), computed once for
    every learning rate and seed (`kinject.train.distill`); beside them, the student's (prompt,
    answer) rows they belong to."""
    from kinject.core.console import BarRow, progress_bar
    from kinject.core.fsio import atomic_dir
    from kinject.runtime.models import load_lm
    from kinject.train.distill import EXAMPLES_FILE, hidden_layers, save_targets, teacher_answers, teacher_targets

    examples = _distill_examples(corpus, pairs, task)
    lm, tok = load_lm(model, placement)
    matched = hidden_layers(lm.config.num_hidden_layers, distill.layers) if hidden else ()
    with progress_bar(console, "pairs") as bar:
        if distill.target == "teacher":
            row = BarRow(bar, "teacher answers")
            row.total(len(examples))
            examples = teacher_answers(lm, tok, examples, progress=row.advance)
        row = BarRow(bar, "teacher logits")
        row.total(len(examples))
        targets = teacher_targets(lm, tok, examples, distill.top_k, progress=row.advance, layers=matched)

    def write(tmp: Path) -> None:
        save_targets(tmp, targets, matched)
        (tmp / EXAMPLES_FILE).write_text(json.dumps([[s, a] for s, _, a in examples], ensure_ascii=False))
    atomic_dir(out, write)


def finetune_stage(model: str, corpus: Path, selection: Selection, paraphrases: Path | None, method: str, seed: int,
                   ft: FinetuneConfig, placement: Placement, out: Path, console: Console, recipe: str = "cpt",
                   pairs: Path | None = None, task: str | None = None, replay: Path | None = None,
                   teacher: Path | None = None) -> None:
    """Continued pre-training on the chunks (and paraphrases), or SFT / RAFT on the QA pairs in
    `task`'s prompt format; with `replay` (a corpus folder), general text mixed in."""
    from kinject.core.console import BarRow, progress_bar
    from kinject.knowledge.corpus import read_chunks
    from kinject.runtime.hyper import TrainConfig
    from kinject.runtime.models import load_tokenizer
    from kinject.train.finetune import search_lr

    every = read_chunks(corpus)
    chunks = select_chunks(corpus, selection, every)
    texts: list[str] = []
    examples: list[tuple[str, str]] = []
    taught: dict = {}  # a distilled student's teacher targets and objective
    if recipe in DISTILLED:  # the student's prompts; the teacher's logits come from their own stage
        from kinject.train.distill import EXAMPLES_FILE, Objective, load_targets

        assert teacher is not None
        examples = [(student, answer) for student, answer in json.loads((teacher / EXAMPLES_FILE).read_text())]
        targets, layers = load_targets(teacher)
        taught = {"teacher": targets, "objective": Objective(ft.distill.temperature, layers, ft.distill.hidden_weight)}
    elif recipe == "cpt":
        texts = [c.text for c in chunks]
        if paraphrases is not None:
            import pyarrow.parquet as pq

            texts += [t for t in pq.read_table(paraphrases / "paraphrases.parquet").column("text").to_pylist() if t]
    else:
        from kinject.synth.trainpairs import first_per_chunk, raft_examples, read_pairs, sft_example
        from kinject.tasks.registry import load_task

        assert pairs is not None and task is not None
        qa, t = read_pairs(pairs / "pairs.jsonl"), load_task(task)
        if recipe == "raft" and ft.raft.per_chunk is not None:
            qa = first_per_chunk(qa, ft.raft.per_chunk)
        examples = [sft_example(t, p) for p in qa] if recipe == "sft" else \
            raft_examples(t, qa, every, ft.raft.distractors, ft.raft.oracle_fraction, seed)
    if replay is not None and ft.replay is not None:
        from kinject.synth.trainpairs import replay_texts

        tok, _ = load_tokenizer(model)
        own = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts + [a + b for a, b in examples])
        texts += replay_texts(read_chunks(replay), own, ft.replay.fraction, seed)
    cfg = TrainConfig.of(ft, method=method, seed=seed, device=placement.device)
    if ft.launch:
        from kinject.train.finetune import write_job

        job = out.parent / f"{out.name}.job.json"
        write_job(job, model, texts, cfg, ft.lr, examples)
        _launch(ft.launch, ["kinject.train.finetune", str(job), str(out)], "fine-tuning", console,
                "rerun to resume from the last checkpoint")
        return
    with progress_bar(console, "steps") as bar:
        search_lr(model, texts, out, cfg, ft.lr, resume=out.exists(),
                  log=lambda m: console.print(f"[dim]·[/dim] {m}", highlight=False),
                  progress=BarRow(bar, f"fine-tuning ({recipe if recipe != 'cpt' else method})").update,
                  examples=examples, **taught)


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


def eval_stage(model: str, task: str, limit: int | None, shots: int, index: Path | None, ks: list[int], cfg: Config,
          out: Path, console: Console) -> None:
    """Score a model on a task, in this process or under the config's launcher."""
    from kinject.eval.evaluation import EvalSpec, run_eval

    spec = EvalSpec(model, (task,), shots, limit, cfg.batch_size, index, tuple(ks), cfg.retriever, None, cfg.device,
                    cfg.dtype, cfg.backend)
    if cfg.evaluation.launch:  # data parallel: the same `kinject eval`, sharded over the processes
        _launch(cfg.evaluation.launch, spec.argv(out), "evaluation", console, "rerun it")
        return
    run_eval(spec, out, console)
