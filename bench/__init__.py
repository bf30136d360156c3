"""Benchmarks: each scenario measures paygate beside a baseline in the same run."""
