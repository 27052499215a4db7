"""kinject: should knowledge go into an LLM by fine-tuning, by retrieval, or both?"""

__version__ = "0.1.0"
