"""The benchmarks' standard layouts on disk (readers) and the reference definitions tied to each set."""
