"""Helpers the tests and the benchmarks share: real processes, the reference loss."""
