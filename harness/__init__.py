"""esa-harness: extreme sensitivity analysis of language models, driven by pytest."""

__version__ = "0.1.0"
