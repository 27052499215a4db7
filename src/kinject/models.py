"""Load causal LMs and embedders from any reference the resolver accepts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kinject.assets import Log, quiet, resolve
from kinject.errors import KinjectError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DType = Literal["fp32", "bf16"]


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken model folder raises: a missing or garbage file (OSError, ValueError,
    KeyError), unreadable weights (safetensors' error, torch's RuntimeError for .bin files)."""
    from safetensors import SafetensorError

    return OSError, ValueError, KeyError, RuntimeError, SafetensorError


def torch_dtype(dtype: DType) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def _location(ref: str, log: Log) -> tuple[str, dict]:
    """from_pretrained's first argument and extra kwargs (`gguf_file` for a .gguf path)."""
    loc = resolve(ref, "lm", log=log).location
    if loc.endswith(".gguf"):
        return str(Path(loc).parent), {"gguf_file": Path(loc).name}
    return loc, {}


def load_tokenizer(ref: str, log: Log = quiet) -> tuple["PreTrainedTokenizerBase", int | None]:
    """An LM's tokenizer and its context length (from the model config), without the weights."""
    from transformers import AutoConfig, AutoTokenizer

    loc, kwargs = _location(ref, log)
    try:
        tok = AutoTokenizer.from_pretrained(loc, **kwargs)
        config = AutoConfig.from_pretrained(loc, **kwargs)
    except _load_errors() as exc:
        raise KinjectError(f"cannot load a tokenizer from '{ref}' ({loc}): {str(exc).splitlines()[0]}") from exc
    return tok, getattr(config, "max_position_embeddings", None)


def load_lm(ref: str, dtype: DType = "fp32", log: Log = quiet) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A causal LM in eval mode and its tokenizer; `ref` may also be a `.gguf` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc, kwargs = _location(ref, log)
    try:
        tok = AutoTokenizer.from_pretrained(loc, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(loc, dtype=torch_dtype(dtype), **kwargs)
    except _load_errors() as exc:
        raise KinjectError(f"cannot load a causal LM from '{ref}' ({loc}): {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, tok


def load_embedder(ref: str, log: Log = quiet) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    loc = resolve(ref, "embedder", log=log).location
    try:
        model = SentenceTransformer(loc, device="cpu")
    except _load_errors() as exc:
        raise KinjectError(f"cannot load an embedder from '{ref}' ({loc}): {str(exc).splitlines()[0]}") from exc
    if getattr(getattr(model, "tokenizer", None), "pad_token", "") is None:  # would fail on the first batch
        raise KinjectError(f"'{ref}' ({loc}) cannot embed batches: its tokenizer has no padding token (a language "
                           f"model, not a sentence-transformers embedder?); give an embedder such as minilm-l6")
    return model
