"""One protocol per benchmark kind of eval.benchmarks: read, extract on every rank, score, record."""
