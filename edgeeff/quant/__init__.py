"""Quantization, shared by every backend: calibration statistics and ranges, bias correction, INT8
simulated in PyTorch, scale groups, quantizable layers and float fallback, per-layer sensitivity,
explicit QDQ for TensorRT.
"""
