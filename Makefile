# The two commands the README promises. Both set up from scratch on a fresh machine.
SHARED ?= ../shared/data/imagenet-sample
OUT ?= out

.PHONY: setup run demo test bench

setup:
	bash scripts/setup.sh

# Main job: Lite0 (packaged weights) to INT8 ONNX, calibrated on the sample photos an installed
# package ships. Uses the ImageNet sample in ../shared for calibration and accuracy when present.
run: setup
	@if [ -d "$(SHARED)/val" ]; then \
	  .venv/bin/edgeeff compile --variant lite0 --target onnx --calib $(SHARED)/calib --val $(SHARED)/val --out $(OUT) --force; \
	else \
	  .venv/bin/edgeeff compile --variant lite0 --target onnx --out $(OUT) --force; \
	fi

test: setup
	.venv/bin/python -m pytest -q -ra --durations=20 -n 2 --dist loadfile

bench: setup
	.venv/bin/python scripts/bench_accuracy.py --variant lite0 --calib $(SHARED)/calib --val $(SHARED)/val
