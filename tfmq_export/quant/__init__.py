"""Quantization simulation on TensorRT-compatible grids (symmetric, zero point 0)."""
