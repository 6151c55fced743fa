"""promptroute's benchmark suite: `python -m bench all` (see bench/README.md).

One module per benchmark, each with a `run(...)` function that takes its sizes as parameters
and returns a JSON-ready dict with a ``targets`` list (issue 4's targets, the measured values,
pass/miss). `bench.__main__` runs them at the real sizes and writes ``bench/results/NAME.json``
and ``SUMMARY.md``; ``tests/test_bench_smoke.py`` runs them at tiny sizes so they keep working.
Nothing is imported here, so that ``python -m bench._load`` (the HTTP load generator, its own
process) starts without numpy, scikit-learn and the router.
"""

__all__ = ["decision", "footprint", "http", "long_inputs", "summary", "training_scale"]
