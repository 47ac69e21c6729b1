"""tmsim: record, simulate, score and gate LLM training managers before they touch a live run."""
__version__ = "0.1.0"
