"""``altclip bench``: each engine (our exact, int8, bf16 and fp16 paths, and transformers') measured in a worker
process of its own (``__main__``) on the same random weights (``measure``)."""

from altclip.bench.measure import ENGINES, Workload, benchmark, peak_rss_mb, run_engine

__all__ = ["ENGINES", "Workload", "benchmark", "peak_rss_mb", "run_engine"]
