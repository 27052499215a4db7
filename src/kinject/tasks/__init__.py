"""Multiple-choice and free-form tasks: the question records, the built-in tasks (MMLU, SciQ, newfacts), cloze questions drawn from a corpus, and the registry that names them."""
