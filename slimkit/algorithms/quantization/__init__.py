"""Quantizers (see issue: quantization)."""
