"""edgeeff: compile EfficientNets into verified INT8 artifacts for edge devices."""

__version__ = "0.1.0"
