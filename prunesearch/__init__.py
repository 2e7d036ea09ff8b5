"""prunesearch: hardware-aware structured-pruning search for large language models."""

__version__ = "0.1.0"
