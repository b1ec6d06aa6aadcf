"""Evaluation on the user's benchmarks: readers in their standard layouts, distributed resumable feature extraction, probes."""
