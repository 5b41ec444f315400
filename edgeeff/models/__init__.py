"""The models: the family as data, the one builder, weight loading and key mapping, variants (surgery)
and their recovery (distillation), the FP32 ONNX export.
"""
