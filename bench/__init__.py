"""Benchmarks: each module writes JSON under bench/results/ and compares against a naive baseline in the same run."""
