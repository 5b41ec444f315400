"""Images and labels: calibration and validation sets, ImageNet label order, the preprocessing spec and
the crop step every runtime shares. Imports nothing of models/.
"""
