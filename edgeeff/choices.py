"""The values each choice-valued option accepts, written once: the command line offers them
(argparse `choices`) and the modules that act on them check options built in Python against the
same tuples. Torch-free on purpose, so that `edgeeff --help` stays fast."""

from __future__ import annotations

from .models.family import ACTIVATIONS  # noqa: F401  (--act; the family defines the activations)

WEIGHT_FORMATS = ("auto", "edgeeff", "lukemelas", "timm", "timm-tf", "torchvision", "tf")  # --weights-format
# --conventions: padding and BatchNorm eps of the training library, always paired in practice
# (TF ports: "same" + 1e-3; PyTorch-trained: symmetric + 1e-5), so one flag (docs/weights.md)
CONVENTION_NAMES = ("tf", "pytorch")
SE_CHOICES = ("keep", "remove")                 # --se
RECOVER_METHODS = ("none", "distill")           # --recover
RECOVER_PARAMS = ("bn", "all")                  # --recover-params (distill.LEARNING_RATES has one rate each)
IO_DTYPES = ("int8", "uint8")                   # --io, integer .tflite targets
SCALE_GROUP_SETTINGS = ("auto", "off")          # --scale-groups
OPTIMIZE_SETTINGS = ("off", "ranges", "refine", "rounding")  # --optimize (quant/optimise.py)
# `edgeeff eval --interpolation`: device_preprocess.INTERPOLATIONS's keys (that module stays
# standalone for devices, so it cannot import this one; a test keeps the two equal).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
