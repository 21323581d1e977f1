"""Benchmark implementations behind `selfctx bench`; heavy imports stay inside the functions."""
