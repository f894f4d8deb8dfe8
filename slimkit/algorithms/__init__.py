"""Compression algorithms: ``slimkit.algorithms.pruning`` and ``slimkit.algorithms.quantization``."""
