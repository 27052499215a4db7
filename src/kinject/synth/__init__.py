"""Synthetic data made by a generator: paraphrases, questions and training pairs, with cached, resumable jobs."""
