"""Malformed inputs across every command: each one must give exit code 2, one line on stderr that
names the offending file or field, no traceback, and no output that looks complete.

The inputs live in tests/bad_inputs/ (one small file each); the few that must be binary or
derived from a real artefact (a truncated FAISS file, weights cut in half) are made by the
`make_*` functions below. Generator replies are not command inputs: they are rejected with a
named reason and counted, which `test_generator_replies_are_rejected_by_reason` checks.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from workspace import FACTS as ALL_FACTS
from workspace import save_tiny_embedder

BAD = Path(__file__).parent / "bad_inputs"
OUTPUT_FILES = ("results.json", "chunks.parquet", "meta.json", "results.sqlite", "summary.json", "index.faiss",
                "config.yaml", "report.html", "paraphrases.parquet")
FACTS = [(title, text) for title, text, _, _ in ALL_FACTS[:4]]


# ---------------------------------------------------------------------------- a valid workspace to break


@pytest.fixture(scope="module")
def ws(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny/ (LM), emb/ and emb32/ (embedders of 64 and 32 dimensions), kb/ (corpus), ix/ (index
    built with emb), task.jsonl, kb.jsonl: every command works on these unchanged."""
    from kinject.knowledge.corpus import Document, build_corpus
    from kinject.rag.retrieval import Embedder, build_index

    root = tmp_path_factory.mktemp("ws")
    model, tok = tiny_lm
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    save_tiny_embedder(root / "emb", tok, 64)
    save_tiny_embedder(root / "emb32", tok, 32)
    with open(root / "kb.jsonl", "w") as fh:
        for i, (title, text) in enumerate(FACTS):
            fh.write(json.dumps({"id": f"d{i}", "title": title, "text": text}) + "\n")
    with open(root / "task.jsonl", "w") as fh:
        for i, (title, _) in enumerate(FACTS):
            fh.write(json.dumps({"id": f"q{i}", "question": f"What is {title}?", "choices": ["a", "b"], "gold": 0,
                                 "source_chunks": [f"d{i}"]}) + "\n")
    docs = [Document(f"d{i}", t, text) for i, (t, text) in enumerate(FACTS)]
    build_corpus(docs, tok, root / "kb", max_tokens=64, min_tokens=1)
    build_index(root / "kb", Embedder(str(root / "emb"), cache_dir=root / "vectors"), root / "ix")
    for folder in ("emb", "emb32"):
        build_index(root / "kb", Embedder(str(root / folder), cache_dir=root / "vectors"), root / f"ix-{folder}")
    return root


# ---------------------------------------------------------------------------- generated inputs


def make_binary(ws: Path, into: Path) -> None:
    (into / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 4)


def make_latin1(ws: Path, into: Path) -> None:
    (into / "latin1.txt").write_bytes("Le café de la gare est fermé le lundi.\n".encode("latin-1"))


def make_empty_folder(ws: Path, into: Path) -> None:
    (into / "empty_folder").mkdir()


def make_user_folder(ws: Path, into: Path) -> None:
    """A folder of the user's own files, named as --out by mistake."""
    (into / "mine").mkdir()
    (into / "mine" / "notes.txt").write_text("my notes\n")


def make_garbage_parquet(ws: Path, into: Path) -> None:
    (into / "kb").mkdir()
    (into / "kb" / "meta.json").write_text("{}")
    (into / "kb" / "chunks.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")


def make_binary_config(ws: Path, into: Path) -> None:
    (into / "binary.yaml").write_bytes(b"\x00\x01\x02name: bad\x00")


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


def make_garbage_config(ws: Path, into: Path) -> None:
    for src in ("tiny", "emb"):
        folder = _copy(ws / src, into / f"{src}_garbage_config")
        shutil.copy(BAD / "models" / "garbage_config.json", folder / "config.json")


def make_unknown_arch(ws: Path, into: Path) -> None:
    shutil.copy(BAD / "models" / "unknown_arch_config.json", _copy(ws / "tiny", into / "unknown_arch") / "config.json")


def make_truncated_weights(ws: Path, into: Path) -> None:
    m = _copy(ws / "tiny", into / "cut_weights")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])


def make_garbage_weights(ws: Path, into: Path) -> None:
    m = _copy(ws / "tiny", into / "garbage_weights")
    (m / "model.safetensors").write_bytes(b"\xff" * 64)


def make_no_weights(ws: Path, into: Path) -> None:
    _copy(ws / "tiny", into / "no_weights", ("*.safetensors",))


def make_no_tokenizer(ws: Path, into: Path) -> None:
    _copy(ws / "tiny", into / "no_tokenizer", ("tokenizer*", "special_tokens_map.json"))


def make_index_without_faiss(ws: Path, into: Path) -> None:
    _copy(ws / "ix", into / "ix", ("index.faiss",))


def make_index_garbage_faiss(ws: Path, into: Path) -> None:
    (_copy(ws / "ix", into / "ix") / "index.faiss").write_bytes(b"not a faiss index" * 8)


def make_index_truncated_faiss(ws: Path, into: Path) -> None:
    ix = _copy(ws / "ix", into / "ix")
    data = (ix / "index.faiss").read_bytes()
    (ix / "index.faiss").write_bytes(data[: len(data) // 2])


def make_index_garbage_meta(ws: Path, into: Path) -> None:
    (_copy(ws / "ix", into / "ix") / "meta.json").write_text('{"embedder": ')


def make_index_meta_without_embedder(ws: Path, into: Path) -> None:
    ix = _copy(ws / "ix", into / "ix")
    meta = json.loads((ix / "meta.json").read_text())
    del meta["embedder"]
    (ix / "meta.json").write_text(json.dumps(meta))


def make_index_other_chunks(ws: Path, into: Path) -> None:
    from kinject.knowledge.corpus import read_chunks, write_chunks

    ix = _copy(ws / "ix", into / "ix")
    write_chunks(ix / "chunks.parquet", read_chunks(ws / "kb")[:2])


def make_index_other_embedder(ws: Path, into: Path) -> None:
    """index.faiss copied from a build with the 32-d embedder; meta.json still names the 64-d one."""
    ix = _copy(ws / "ix", into / "ix")
    shutil.copy(ws / "ix-emb32" / "index.faiss", ix / "index.faiss")


def make_config_folder(name: str) -> Callable[[Path, Path], None]:
    def make(ws: Path, into: Path) -> None:
        folder = into / "cfg"
        folder.mkdir()
        shutil.copy(BAD / "configs" / name, folder / name)
        for f in ("tiny", "kb.jsonl", "task.jsonl"):
            (folder / f).symlink_to(ws / f)
        shutil.copy(BAD / "configs" / "bad_pairs.jsonl", folder / "bad_pairs.jsonl")
    return make


# ---------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    argv: str
    """Command line; {ws} = the valid workspace, {bad} = tests/bad_inputs, {in} = generated inputs, {out} = where
    output would go."""
    names: tuple[str, ...]
    """What the one-line message must mention: the offending file, field or option."""
    make: Callable[[Path, Path], None] | None = None
    extra: tuple[str, ...] = field(default=())


CORPUS = "corpus build --tokenizer {ws}/tiny --min-tokens 1 --out {out} --source "
INDEX = "index build --embedder {ws}/emb --out {out} --corpus "
EVAL = "eval --model {ws}/tiny --out {out} --task "
EVAL_MODEL = "eval --task {ws}/task.jsonl --out {out} --model "
RAG = "eval --model {ws}/tiny --task {ws}/task.jsonl --out {out} --k 0,1 --rag "
RUN = "run --out {out} --cache {in}/cache --no-report "
FINETUNE = "finetune --model {ws}/tiny --corpus {ws}/kb --out {out} "

CASES = [
    # corpus files
    Case("corpus-empty-file", CORPUS + "{bad}/corpus/empty.txt", ("empty.txt",)),
    Case("corpus-whitespace-only", CORPUS + "{bad}/corpus/whitespace.md", ("whitespace.md",)),
    Case("corpus-binary", CORPUS + "{in}/binary.txt", ("binary.txt", "binary"), make_binary),
    Case("corpus-not-utf8", CORPUS + "{in}/latin1.txt", ("latin1.txt", "UTF-8"), make_latin1),
    Case("corpus-broken-jsonl", CORPUS + "{bad}/corpus/broken.jsonl", ("broken.jsonl:2", "JSON")),
    Case("corpus-jsonl-no-text", CORPUS + "{bad}/corpus/no_text.jsonl", ("no_text.jsonl:1", "'text'")),
    Case("corpus-jsonl-array-line", CORPUS + "{bad}/corpus/array_line.jsonl", ("array_line.jsonl:1",)),
    Case("corpus-jsonl-groups-not-list", CORPUS + "{bad}/corpus/groups_not_list.jsonl",
         ("groups_not_list.jsonl:1", "groups")),
    Case("corpus-xml-not-xml", CORPUS + "{bad}/corpus/not_xml.xml", ("not_xml.xml", "XML")),
    Case("corpus-xml-truncated", CORPUS + "{bad}/corpus/truncated.xml", ("truncated.xml", "XML")),
    Case("corpus-unsupported-type", CORPUS + "{bad}/corpus/report.pdf", ("report.pdf", ".pdf")),
    Case("corpus-missing-source", CORPUS + "{in}/no_such_file.txt", ("no_such_file.txt",)),
    Case("corpus-empty-folder", CORPUS + "{in}/empty_folder", ("empty_folder",), make_empty_folder),
    Case("corpus-chunk-tokens-too-small", CORPUS + "{ws}/kb.jsonl --chunk-tokens 8", ("--chunk-tokens",)),
    Case("corpus-chunk-tokens-beyond-context", CORPUS + "{ws}/kb.jsonl --chunk-tokens 4096",
         ("--chunk-tokens", "context")),
    Case("corpus-small-policy", CORPUS + "{ws}/kb.jsonl --small squash", ("--small",)),
    Case("corpus-tokenizer-not-a-model", CORPUS + "{ws}/kb.jsonl --tokenizer {bad}/models/no_config",
         ("no_config", "config.json")),
    # index builds
    Case("index-corpus-not-a-corpus", INDEX + "{in}/empty_folder", ("empty_folder", "corpus"), make_empty_folder),
    Case("index-corpus-garbage-parquet", INDEX + "{in}/kb", ("chunks.parquet",), make_garbage_parquet),
    Case("index-kind", INDEX + "{ws}/kb --kind annoy", ("--kind",)),
    Case("index-embedder-missing", INDEX + "{ws}/kb --embedder {in}/no_such_embedder", ("no_such_embedder",)),
    Case("index-embedder-no-config", INDEX + "{ws}/kb --embedder {bad}/models/no_config",
         ("no_config", "config.json")),
    Case("index-embedder-garbage-config", INDEX + "{ws}/kb --embedder {in}/emb_garbage_config",
         ("emb_garbage_config", "config.json", "not a valid JSON"), make_garbage_config),
    Case("index-embedder-is-an-lm-without-padding", INDEX + "{ws}/kb --embedder {ws}/tiny", ("tiny", "pad")),
    # task files
    Case("task-missing-file", EVAL + "{in}/no_such_task.jsonl", ("no_such_task.jsonl",)),
    Case("task-missing-gold", EVAL + "{bad}/tasks/missing_gold.jsonl", ("missing_gold.jsonl:1", "'gold'")),
    Case("task-gold-out-of-range", EVAL + "{bad}/tasks/gold_out_of_range.jsonl",
         ("gold_out_of_range.jsonl:1", "'gold'")),
    Case("task-gold-not-int", EVAL + "{bad}/tasks/gold_not_int.jsonl", ("gold_not_int.jsonl:1", "'gold'")),
    Case("task-choices-not-list", EVAL + "{bad}/tasks/choices_not_list.jsonl",
         ("choices_not_list.jsonl:1", "'choices'")),
    Case("task-one-choice", EVAL + "{bad}/tasks/one_choice.jsonl", ("one_choice.jsonl:1", "'choices'")),
    Case("task-duplicate-choices", EVAL + "{bad}/tasks/duplicate_choices.jsonl",
         ("duplicate_choices.jsonl:1", "'choices'")),
    Case("task-empty-question", EVAL + "{bad}/tasks/empty_question.jsonl", ("empty_question.jsonl:1", "'question'")),
    Case("task-duplicate-id", EVAL + "{bad}/tasks/duplicate_id.jsonl", ("duplicate_id.jsonl:2", "q1")),
    Case("task-bad-split", EVAL + "{bad}/tasks/bad_split.jsonl", ("bad_split.jsonl:1", "'split'")),
    Case("task-only-dev-items", EVAL + "{bad}/tasks/only_dev.jsonl", ("only_dev.jsonl",)),
    Case("task-broken-line", EVAL + "{bad}/tasks/broken_line.jsonl", ("broken_line.jsonl:2", "JSON")),
    Case("task-source-chunks-not-list", EVAL + "{bad}/tasks/source_chunks_not_list.jsonl",
         ("source_chunks_not_list.jsonl:1", "'source_chunks'")),
    Case("task-path-with-brackets", EVAL + "'{in}/q[bold]1.jsonl'", ("q[bold]1.jsonl:1", "'gold'"),
         lambda ws, into: shutil.copy(BAD / "tasks" / "missing_gold.jsonl", into / "q[bold]1.jsonl")),
    Case("task-binary", EVAL + "{in}/binary.txt", ("binary.txt",), make_binary),
    Case("task-unknown-format", EVAL + "{ws}/task.jsonl@essay", ("@essay",)),
    Case("free-missing-answer", EVAL + "{bad}/tasks/free_missing_answer.jsonl", ("free_missing_answer.jsonl:1", "'answer'")),
    Case("free-empty-answer", EVAL + "{bad}/tasks/free_empty_answer.jsonl", ("free_empty_answer.jsonl:2", "empty")),
    Case("free-aliases-not-list", EVAL + "{bad}/tasks/free_aliases_not_list.jsonl",
         ("free_aliases_not_list.jsonl:1", "'aliases'")),
    Case("free-csv-wrong-columns", EVAL + "{bad}/tasks/free_wrong_columns.csv", ("free_wrong_columns.csv:1", "question")),
    Case("free-csv-bad-answerable", EVAL + "{bad}/tasks/free_bad_answerable.csv",
         ("free_bad_answerable.csv:2", "'answerable'")),
    Case("free-file-as-mc", EVAL + "{bad}/tasks/free_as_mc.jsonl@mc", ("free_as_mc.jsonl:1", "@free")),
    Case("task-shots-beyond-dev", EVAL + "{ws}/task.jsonl --shots 2", ("2 shots are too many",)),
    # model references
    Case("model-missing-path", EVAL_MODEL + "./no/such/model", ("./no/such/model",)),
    Case("model-hub-id-offline", EVAL_MODEL + "kinject-tests/no-such-model", ("kinject-tests/no-such-model",)),
    Case("model-no-config", EVAL_MODEL + "{bad}/models/no_config", ("no_config", "config.json")),
    Case("model-garbage-config", EVAL_MODEL + "{in}/tiny_garbage_config",
         ("tiny_garbage_config", "config.json", "not a valid JSON"), make_garbage_config),
    Case("model-unknown-architecture", EVAL_MODEL + "{in}/unknown_arch", ("unknown_arch", "no-such-architecture"),
         make_unknown_arch),
    Case("model-garbage-gguf", EVAL_MODEL + "{bad}/models/garbage.gguf", ("garbage.gguf",)),
    Case("model-truncated-weights", EVAL_MODEL + "{in}/cut_weights", ("cut_weights",), make_truncated_weights),
    Case("model-garbage-weights", EVAL_MODEL + "{in}/garbage_weights", ("garbage_weights",), make_garbage_weights),
    Case("model-no-weights", EVAL_MODEL + "{in}/no_weights", ("no_weights",), make_no_weights),
    Case("model-no-tokenizer", EVAL_MODEL + "{in}/no_tokenizer", ("no_tokenizer", "tokenizer"), make_no_tokenizer),
    # index folders
    Case("index-folder-missing", RAG + "{in}/no_such_index", ("no_such_index",)),
    Case("index-without-faiss-file", RAG + "{in}/ix", ("ix", "index.faiss"), make_index_without_faiss),
    Case("index-garbage-faiss-file", RAG + "{in}/ix", ("index.faiss", "corrupted"), make_index_garbage_faiss),
    Case("index-truncated-faiss-file", RAG + "{in}/ix", ("index.faiss", "corrupted"), make_index_truncated_faiss),
    Case("index-garbage-meta", RAG + "{in}/ix", ("meta.json",), make_index_garbage_meta),
    Case("index-meta-without-embedder", RAG + "{in}/ix", ("meta.json", "'embedder'"), make_index_meta_without_embedder),
    Case("index-chunks-of-another-corpus", RAG + "{in}/ix", ("ix", "chunks"), make_index_other_chunks),
    Case("index-built-with-another-embedder", RAG + "{in}/ix", ("index.faiss", "dimension"),
         make_index_other_embedder),
    Case("index-k-beyond-size", RAG + "{ws}/ix --k 0,50", ("K=50",)),
    Case("index-k-negative", RAG + "{ws}/ix --k 0,-1", ("--k",)),
    Case("ask-garbage-faiss-file", "ask 'Where is Zorblat?' --index {in}/ix", ("index.faiss",),
         make_index_garbage_faiss),
    # experiment configs
    *[Case(f"config-{name.removesuffix('.yaml').replace('_', '-')}", RUN + "{in}/cfg/" + name, names,
           make_config_folder(name)) for name, names in [
        ("unknown_key.yaml", ("unknown_key.yaml:16", "finetune.bacth", "unknown key")),
        ("unknown_method.yaml", ("unknown_method.yaml:4", "methods.1", "'rga'")),
        ("negative_k.yaml", ("negative_k.yaml:3", "k")),
        ("k_wrong_type.yaml", ("k_wrong_type.yaml:3", "k")),
        ("epochs_wrong_type.yaml", ("epochs_wrong_type.yaml:15", "finetune.epochs")),
        ("unknown_kb.yaml", ("unknown_kb.yaml:12", "tasks.0.kb", "'fcts'")),
        ("bad_yaml.yaml", ("bad_yaml.yaml", "YAML")),
        ("tab_indent.yaml", ("tab_indent.yaml:7", "YAML")),
        ("unknown_model.yaml", ("unknown_model.yaml:2", "models.0", "'no-such-model'")),
        ("negative_lr.yaml", ("negative_lr.yaml:14", "finetune.lr")),
        ("lr_search_without_holdout.yaml", ("lr_search_without_holdout.yaml:15", "finetune.val_fraction",
                                            "held-out chunks")),
        ("micro_batch_above_batch.yaml", ("micro_batch_above_batch.yaml:13", "finetune", "micro_batch (8) must be "
                                          "at most batch (2)")),
        ("missing_task_file.yaml", ("missing_task_file.yaml:11", "tasks.0.task", "missing.jsonl")),
        ("unknown_task_format.yaml", ("unknown_task_format.yaml:11", "tasks.0.task", "@essay")),
        ("name_with_slash.yaml", ("name_with_slash.yaml:1", "name")),
        ("too_many_shots.yaml", ("too_many_shots.yaml:13", "tasks.0.shots")),
        ("shots_beyond_dev.yaml", ("shots_beyond_dev.yaml:13", "tasks.0.shots", "0 dev examples")),
        ("unknown_small_policy.yaml", ("unknown_small_policy.yaml:10", "knowledge_bases.facts.small")),
        ("no_tasks.yaml", ("no_tasks.yaml", "tasks")),
        ("empty.yaml", ("empty.yaml",)),
        ("top_level_list.yaml", ("top_level_list.yaml", "mapping")),
        # the recipes beyond the paper (SFT, RAFT, replay, control tasks)
        ("sft_without_pairs.yaml", ("sft_without_pairs.yaml:", "finetune.pairs", "sft")),
        ("replay_method_without_replay.yaml", ("replay_method_without_replay.yaml:", "finetune.replay", "ft+replay")),
        ("replay_source_missing.yaml", ("replay_source_missing.yaml:17", "finetune.replay.source",
                                        "no_such_corpus")),
        ("replay_fraction_one.yaml", ("replay_fraction_one.yaml:18", "finetune.replay.fraction")),
        ("control_is_target.yaml", ("control_is_target.yaml:13", "control.1.task", "task.jsonl@cloze")),
        ("raft_too_few_chunks.yaml", ("raft_too_few_chunks.yaml", "finetune.raft.distractors", "11 chunks")),
        ("pairs_file_missing.yaml", ("pairs_file_missing.yaml:16", "finetune.pairs", "no_such_pairs.jsonl")),
        ("pairs_file_malformed.yaml", ("bad_pairs.jsonl:2", "'answer'")),
        ("raft_with_rag_suffix.yaml", ("raft_with_rag_suffix.yaml:12", "methods.1", "raft+rag")),
    ]],
    Case("config-missing-file", RUN + "{in}/no_such_config.yaml", ("no_such_config.yaml",)),
    Case("config-binary", RUN + "{in}/binary.yaml", ("binary.yaml",), make_binary_config),
    # fine-tuning options and inputs
    Case("finetune-lr-negative", FINETUNE + "--lr=-1e-5", ("--lr",)),
    Case("finetune-lr-not-a-number", FINETUNE + "--lr fast", ("--lr",)),
    Case("finetune-epochs-zero", FINETUNE + "--epochs 0", ("--epochs",)),
    Case("finetune-micro-batch-above-batch", FINETUNE + "--batch 2 --micro-batch 8", ("--micro-batch", "at most batch")),
    Case("finetune-block-size-beyond-context", FINETUNE + "--block-size 4096", ("--block-size", "context")),
    Case("finetune-corpus-not-a-corpus", "finetune --model {ws}/tiny --out {out} --corpus {in}/empty_folder",
         ("empty_folder",), make_empty_folder),
    Case("finetune-extra-texts-without-text", FINETUNE + "--extra-texts {bad}/tasks/missing_gold.jsonl",
         ("missing_gold.jsonl:1", "'text'")),
    # results and report
    Case("results-missing-run", "results {in}/no_such_run", ("no_such_run",)),
    Case("results-folder-without-store", "results {in}/empty_folder", ("empty_folder",), make_empty_folder),
    Case("report-folder-without-store", "report {in}/empty_folder", ("empty_folder",), make_empty_folder),
    # generator spec
    # an --out folder that holds the user's files: refused before any work, nothing deleted
    Case("corpus-out-holds-user-files", "corpus build --tokenizer {ws}/tiny --min-tokens 1 --source {ws}/kb.jsonl "
         "--out {in}/mine", ("mine", "notes.txt"), make_user_folder),
    Case("index-out-holds-user-files", "index build --embedder {ws}/emb --corpus {ws}/kb --out {in}/mine",
         ("mine", "notes.txt"), make_user_folder),
    Case("index-out-is-the-corpus", "index build --embedder {ws}/emb --corpus {ws}/kb --out {ws}/kb", ("kb",)),
    Case("paraphrase-out-holds-user-files", "paraphrase --corpus {ws}/kb --out {in}/mine --generator gpt4",
         ("mine", "notes.txt"), make_user_folder),
    Case("paraphrase-cache-under-a-file", "paraphrase --corpus {ws}/kb --out {out} --cache {ws}/kb.jsonl/synth.sqlite",
         ("kb.jsonl/synth.sqlite", "--cache")),
    Case("questions-out-is-a-users-task", "questions --corpus {ws}/kb --method cloze --out {ws}/task.jsonl",
         ("task.jsonl", "not written by")),
    Case("paraphrase-unknown-generator", "paraphrase --corpus {ws}/kb --out {out} --generator gpt4", ("gpt4",)),
    # documents (issue 16)
    Case("doc-encrypted-pdf", CORPUS + "{bad}/documents/encrypted.pdf", ("encrypted.pdf", "encrypted PDF")),
    Case("doc-scanned-pdf", CORPUS + "{bad}/documents/scanned.pdf",
         ("scanned.pdf", "no text layer on pages 1-12; OCR it first")),
    Case("doc-truncated-pdf", CORPUS + "{bad}/documents/truncated.pdf", ("truncated.pdf", "unreadable PDF")),
    Case("doc-garbage-pdf", CORPUS + "{bad}/documents/garbage.pdf", ("garbage.pdf", "unreadable PDF")),
    Case("doc-truncated-docx", CORPUS + "{bad}/documents/truncated.docx", ("truncated.docx", "damaged Word file")),
    Case("doc-docx-not-a-zip", CORPUS + "{bad}/documents/not_a_zip.docx", ("not_a_zip.docx", "not a .docx")),
    Case("doc-docx-without-text", CORPUS + "{bad}/documents/no_text.docx", ("no_text.docx", "no text")),
    Case("doc-old-word-doc", CORPUS + "{bad}/documents/old_word.doc", ("old_word.doc", "save it as .docx")),
    Case("doc-binary-html", CORPUS + "{bad}/documents/binary.html", ("binary.html", "not an HTML page")),
    Case("doc-html-without-main-text", CORPUS + "{bad}/documents/no_main_text.html",
         ("no_main_text.html", "no main text")),
    Case("doc-folder-empty-pdf", CORPUS + "{bad}/documents/folder_with_empty_pdf",
         ("manual.pdf", "empty file (0 bytes)")),
    Case("doc-folder-empty-html", CORPUS + "{bad}/documents/folder_with_empty_html",
         ("page.html", "empty file (0 bytes)")),
    Case("doc-folder-scanned-pdf", CORPUS + "{bad}/documents/folder_with_scan", ("scan.pdf", "OCR it first")),
    Case("doc-groups-glob-matches-nothing", CORPUS + "{bad}/documents/groups_typo",
         ("groups.yaml", "'finance/*' matches no file")),
    Case("doc-groups-not-yaml", CORPUS + "{bad}/documents/groups_bad_yaml", ("groups.yaml:", "not valid YAML")),
    Case("doc-groups-empty-list", CORPUS + "{bad}/documents/groups_empty_list", ("groups.yaml", "'notes.md'")),
    Case("doc-skip-bad-leaves-nothing", CORPUS + "{bad}/documents/folder_with_scan/scan.pdf --skip-bad",
         ("scan.pdf", "OCR it first")),
]


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`kinject ARGV` in this process (an import of torch per case would cost seconds)."""
    from transformers.utils import logging

    from kinject.cli.main import main

    # What `main` does through environment variables for a fresh process (here transformers is
    # already imported, so they would come too late).
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    monkeypatch.setattr(sys, "argv", ["kinject", *argv])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _argv(template: str, ws: Path, into: Path) -> list[str]:
    import shlex

    return shlex.split(template.format(ws=ws, bad=BAD, out=into / "out", **{"in": into}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case: Case, ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    into = tmp_path / "in"
    into.mkdir()
    if case.make:
        case.make(ws, into)
    before = {p for p in tmp_path.rglob("*")}
    code, out, err = run_cli(_argv(case.argv, ws, into), monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    print(f"\n{case.id}\texit {code}\t{err.strip()}")  # shown with -s: the outcome table of the suite
    assert "Traceback" not in err and code == 2, f"exit {code}; stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{err}"
    for name in case.names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    out_dir = into / "out"
    assert not out_dir.exists() or not any(out_dir.iterdir()), f"output left in {out_dir}"
    if (into / "mine").exists():
        assert [p.name for p in (into / "mine").iterdir()] == ["notes.txt"], "the user's folder was changed"
    new = [p for p in tmp_path.rglob("*") if p not in before and p.name in OUTPUT_FILES]
    assert not new, f"complete-looking output left: {new}"


def test_the_unbroken_inputs_work(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The bad inputs fail because of their one defect: the same commands on the valid workspace pass."""
    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    make_config_folder("good.yaml")(ws, tmp_path)
    for template, writes in ((CORPUS + "{ws}/kb.jsonl", "chunks.parquet"), (EVAL + "{ws}/task.jsonl", "results.json"),
                             (RAG + "{ws}/ix", "results.json"), (RUN + "{in}/cfg/good.yaml --dry-run", None)):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        code, _, err = run_cli(_argv(template, ws, tmp_path), monkeypatch, capsys)
        assert code == 0, f"{template}: {err}"
        assert writes is None or (tmp_path / "out" / writes).is_file()


# ---------------------------------------------------------------------------- generator replies


@pytest.mark.parametrize("name, reason", [
    ("paraphrase_not_json.txt", "not_json"),
    ("paraphrase_truncated.txt", "not_json"),
    ("paraphrase_copy.txt", "copy"),
    ("paraphrase_lost_number.txt", "lost_numbers"),
    ("paraphrase_too_short.txt", "too_short"),
    ("paraphrase_empty.txt", "empty"),
    ("questions_html.txt", "not_json"),
    ("questions_not_a_list.txt", "not_json"),
    ("questions_three_options.txt", "not_4_options"),
    ("questions_duplicate_options.txt", "duplicate_options"),
    ("questions_answer_not_an_option.txt", "answer_not_an_option"),
    ("selection_not_json.txt", None),
    ("selection_out_of_range.txt", None),
])
def test_generator_replies_are_rejected_by_reason(name: str, reason: str | None) -> None:
    """A bad reply is never an error for the user: it is rejected with a reason that the yield
    report counts, and the prompt is retried (see tests/test_synth.py for the retry/count path
    against a real HTTP server)."""
    from kinject.synth.paraphrase import check_paraphrase, extract_paraphrases
    from kinject.synth.questions import parse_questions, parse_selection

    source = ("Marie Curie won the Nobel Prize in Physics in 1903 together with Pierre Curie, and a second Nobel "
              "Prize in Chemistry in 1911 for the discovery of polonium and radium.")
    reply = (BAD / "replies" / name).read_text()
    if name.startswith("paraphrase"):
        found = extract_paraphrases(reply)
        got = "not_json" if found is None else check_paraphrase(source, found[0])
        assert got == reason
    elif name.startswith("questions"):
        questions, rejected = parse_questions(reply)
        assert questions == [] and dict(rejected) == {reason: 1}
    else:
        assert parse_selection(reply, 4) is None


def test_a_bad_file_inside_a_run_fails_its_stages_and_exits_1(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Inside `kinject run` a broken knowledge-base file is not a config error: the stages that need
    it are recorded as failed with the one-line reason, the others run, and the exit code is 1."""
    import sqlite3

    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    make_config_folder("good.yaml")(ws, tmp_path)
    shutil.copy(BAD / "corpus" / "broken.jsonl", tmp_path / "cfg" / "broken.jsonl")
    config = tmp_path / "cfg" / "good.yaml"
    config.write_text(config.read_text().replace("sources: [kb.jsonl]", "sources: [broken.jsonl]"))
    code, out, err = run_cli(_argv(RUN + "{in}/cfg/good.yaml", ws, tmp_path), monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "failed corpus facts" in err and "broken.jsonl:2: not valid JSON" in err
    db = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    rows = db.execute("SELECT method, k, status, error FROM conditions ORDER BY method, k").fetchall()
    assert [r[:3] for r in rows] == [("base", 0, "failed"), ("rag", 1, "failed")]
    assert all("failed" in r[3] for r in rows)
