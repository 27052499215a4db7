"""Load causal LMs and embedders from any reference the resolver accepts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kinject.core.errors import KinjectError, error_line
from kinject.runtime.assets import Log, quiet, resolve
from kinject.runtime.devices import Placement

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CPU = Placement("cpu", "fp32")
"""The exact default: fp32 on the CPU, the numbers lm-eval gives."""


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken model folder raises: a missing or garbage file (OSError, ValueError,
    KeyError), unreadable weights (safetensors' error, torch's RuntimeError for .bin files)."""
    from safetensors import SafetensorError

    return OSError, ValueError, KeyError, RuntimeError, SafetensorError


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model")


def _where(ref: str, loc: str) -> str:
    """'ref', plus where it resolved to when that says more (a catalog name, a relative path)."""
    return f"'{ref}'" if str(Path(ref).expanduser().resolve()) == loc else f"'{ref}' ({loc})"


def _check_folder(ref: str, loc: str, what: str) -> None:
    """A local folder that cannot be a model says so plainly, before transformers' longer errors."""
    folder = Path(loc)
    if not folder.is_dir() or (folder / "modules.json").is_file():  # sentence-transformers may nest its parts
        return
    if not (folder / "config.json").is_file():
        raise KinjectError(f"{_where(ref, loc)} holds no config.json: not a Hugging Face model folder; give {what}")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise KinjectError(f"{_where(ref, loc)} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...); "
                           f"copy the model's tokenizer into it")


def _location(ref: str, log: Log) -> tuple[str, dict]:
    """from_pretrained's first argument and extra kwargs (`gguf_file` for a .gguf path)."""
    loc = resolve(ref, "lm", log=log).location
    if loc.endswith(".gguf"):
        return str(Path(loc).parent), {"gguf_file": Path(loc).name}
    _check_folder(ref, loc, "a catalog LM, a model folder or a .gguf file")
    return loc, {}


def load_tokenizer(ref: str, log: Log = quiet) -> tuple["PreTrainedTokenizerBase", int | None]:
    """An LM's tokenizer and its context length (from the model config), without the weights."""
    from transformers import AutoConfig, AutoTokenizer

    loc, kwargs = _location(ref, log)
    try:
        config = AutoConfig.from_pretrained(loc, **kwargs)
        tok = AutoTokenizer.from_pretrained(loc, **kwargs)
    except _load_errors() as exc:
        raise KinjectError(f"cannot load a tokenizer from {_where(ref, loc)}: {error_line(exc)}") from exc
    return tok, getattr(config, "max_position_embeddings", None)


def load_lm(ref: str, placement: Placement = CPU,
            log: Log = quiet) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A causal LM in eval mode on the placement's device and dtype, and its tokenizer; `ref` may
    also be a `.gguf` file. With `device_map="auto"` a model too large for the first GPU has its
    layers spread over every GPU by accelerate (`model.hf_device_map` says where)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loc, kwargs = _location(ref, log)
    try:
        config = AutoConfig.from_pretrained(loc, **kwargs)  # an unknown architecture is named before anything else
        tok = AutoTokenizer.from_pretrained(loc, **kwargs)
        spread = placement.device_map is not None and not _fits_one_gpu(config.to_dict(), placement)
        if spread:
            kwargs["device_map"] = placement.device_map
        model = AutoModelForCausalLM.from_pretrained(loc, dtype=placement.torch_dtype, **kwargs)
    except _load_errors() as exc:
        raise KinjectError(f"cannot load a causal LM from {_where(ref, loc)}: {error_line(exc)}") from exc
    if not spread:
        model.to(placement.torch_device)
    model.eval()
    return model, tok


def _fits_one_gpu(config: dict, placement: Placement) -> bool:
    """Whether the weights (with 20% for activations and KV cache) fit in the first GPU's free
    memory; a model of unknown size is spread, to be safe."""
    import torch

    from kinject.runtime.costs import layer_params

    n = layer_params(config, embeddings=True)
    if n is None:
        return False
    free, _ = torch.cuda.mem_get_info(placement.torch_device)
    return n * placement.torch_dtype.itemsize * 1.2 < free


def load_embedder(ref: str, placement: Placement = CPU, log: Log = quiet) -> "SentenceTransformer":
    """A sentence-transformers model on the placement's device, its weights in the placement's dtype."""
    from sentence_transformers import SentenceTransformer

    loc = resolve(ref, "embedder", log=log).location
    _check_folder(ref, loc, "a catalog embedder or a sentence-transformers folder")
    try:
        model = SentenceTransformer(loc, device=placement.device,
                                    model_kwargs={"dtype": placement.torch_dtype})
    except _load_errors() as exc:
        raise KinjectError(f"cannot load an embedder from {_where(ref, loc)}: {error_line(exc)}") from exc
    if getattr(getattr(model, "tokenizer", None), "pad_token", "") is None:  # would fail on the first batch
        raise KinjectError(f"{_where(ref, loc)} cannot embed batches: its tokenizer has no padding token (a language "
                           f"model, not a sentence-transformers embedder?); give an embedder such as minilm-l6")
    return model
