"""Language models behind one request API: log-likelihood scoring, generation, local and OpenAI-compatible backends, and `kinject serve`."""
