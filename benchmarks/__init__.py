"""Benchmark definitions and loaders, registered under the ``editbench.benchmarks`` entry points."""
