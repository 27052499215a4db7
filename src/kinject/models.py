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


def torch_dtype(dtype: DType) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]


def load_lm(ref: str, dtype: DType = "fp32", log: Log = quiet) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A causal LM in eval mode and its tokenizer; `ref` may also be a `.gguf` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc = resolve(ref, "lm", log=log).location
    kwargs: dict = {}
    if loc.endswith(".gguf"):
        kwargs["gguf_file"] = Path(loc).name
        loc = str(Path(loc).parent)
    try:
        tok = AutoTokenizer.from_pretrained(loc, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(loc, dtype=torch_dtype(dtype), **kwargs)
    except (OSError, ValueError) as exc:
        raise KinjectError(f"cannot load a causal LM from '{ref}' ({loc}): {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, tok


def load_embedder(ref: str, log: Log = quiet) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    loc = resolve(ref, "embedder", log=log).location
    try:
        return SentenceTransformer(loc, device="cpu")
    except (OSError, ValueError) as exc:
        raise KinjectError(f"cannot load an embedder from '{ref}' ({loc}): {str(exc).splitlines()[0]}") from exc
