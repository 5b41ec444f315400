"""Everything copied to a device beside the artifacts: device_preprocess.py (the preprocessing
arithmetic, numpy and Pillow only) and the device scripts that import it. They must run where
edgeeff is not installed: nothing here imports edgeeff. Shipped in the wheel as package data.
"""
