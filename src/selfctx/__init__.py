"""selfctx: teach a language model to read contexts far longer than its window, with data it writes itself."""

__version__ = "0.1.0"
