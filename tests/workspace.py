"""Test material shared by the runner, fault and bad-input tests: six invented facts (no model
can know them), the knowledge base and question files made from them, and a tiny embedder."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("Zorblat", "Zorblat is a moon of the planet Kepler-22b, discovered in 2031 by Ana Ruiz.", "2031",
     ["1999", "2012", "2045"]),
    ("Quimby River", "The Quimby River flows 412 kilometres through the Veltan valley into Lake Osmer.",
     "412 kilometres", ["95 kilometres", "1,200 kilometres", "48 kilometres"]),
    ("Pellan", "Pellan is a grain first cultivated by the Aramu people near the city of Tessaly.", "Tessaly",
     ["Corvane", "Mirath", "Duskwell"]),
    ("Hobarth Castle", "Hobarth Castle was built in 1487 by Duke Edric and burned down in 1602.", "1487",
     ["1320", "1555", "1710"]),
    ("The vent whale", "The vent whale feeds on sulfur bacteria and can dive to 3,900 metres.", "3,900 metres",
     ["200 metres", "850 metres", "12,000 metres"]),
    ("Lirra", "Lirra is the capital of the island nation of Sendo, home to 2.4 million people.", "Sendo",
     ["Kalum", "Breva", "Toska"]),
]
"""(title, text, answer, three wrong answers) per fact."""

# Two real facts and a valid paraphrase of each (every number and name kept, wording changed).
CURIE = ("Marie Curie won the Nobel Prize in Physics in 1903 together with Pierre Curie, and a second Nobel Prize "
         "in Chemistry in 1911 for the discovery of polonium and radium.")
CURIE_PAR = ("In 1903 the Nobel Prize in Physics went to Marie Curie and Pierre Curie; in 1911 she received a second "
             "Nobel Prize, in Chemistry, after finding radium and polonium.")
EVEREST = "Mount Everest rises 8,849 metres above sea level on the border between Nepal and China."
EVEREST_PAR = "On the border of Nepal and China, Mount Everest reaches 8849 metres above the level of the sea."


CONFIG = """\
name: {name}
models: [tiny]
{embedder}k: [0, 1, 2]
methods: [base, rag, ft, ft+rag]
knowledge_bases:
  facts:
    sources: [kb.jsonl]
    chunk_tokens: 64
    min_tokens: 4
tasks:
  - task: task.jsonl@cloze
    kb: facts
finetune:
  lr: [0.001]
  epochs: 2
  block_size: 32
  batch: 4
  micro_batch: 2
  save_every: 1
  val_fraction: 0
"""


def config(name: str, embedder: str | Path | None = None) -> str:
    """The full grid (base, RAG K=0..2, FT, FT+RAG) on the facts with the tiny LM saved as tiny/."""
    return CONFIG.format(name=name, embedder="" if embedder is None else f"embedder: {embedder}\n")


def write_facts(root: Path, *, repeat: int = 2) -> None:
    """kb.jsonl (one document per fact, its text `repeat` times, so fine-tuning has something to
    fit) and task.jsonl (one 4-option question per fact, gold first, tied to its document)."""
    with open(root / "kb.jsonl", "w") as fh:
        for i, (title, text, _, _) in enumerate(FACTS):
            fh.write(json.dumps({"id": f"d{i}", "title": title, "text": " ".join([text] * repeat)}) + "\n")
    with open(root / "task.jsonl", "w") as fh:
        for i, (title, _, answer, wrong) in enumerate(FACTS):
            fh.write(json.dumps({"id": f"q{i}", "question": f"What do we know about {title}?",
                                 "choices": [answer, *wrong], "gold": 0, "source_chunks": [f"d{i}"]}) + "\n")


def write_project(root: Path, tiny_lm, config_name: str | None = "tiny") -> Path:
    """The tiny grid's folder: the tiny LM saved as tiny/, the facts (`write_facts`) and, unless
    `config_name` is None, `<config_name>.yaml` (`config`)."""
    model, tok = tiny_lm
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    write_facts(root)
    if config_name is not None:
        (root / f"{config_name}.yaml").write_text(config(config_name))
    return root


def save_tiny_embedder(folder: Path, tok, hidden: int = 64) -> None:
    """A randomly initialised one-layer Llama body saved as a model folder: sentence-transformers
    loads it with mean pooling, `hidden` dimensions, the tiny LM's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(hidden)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    LlamaModel(cfg).save_pretrained(folder)
    type(tok)(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="<s>",
              pad_token="<s>").save_pretrained(folder)
