"""Evaluation: LongBench v1 (English) with the official prompts and metrics, needle-in-a-haystack grids,
RULER-style variants, and a report comparing methods (truncation, full attention, compression)."""
