import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeeff.calibration import collect_stats, mse_range, percentile_range, tensor_ranges


def _tiny_model(path):
    """x -> Relu -> y -> Mul(2) -> z : three activations with known ranges."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["y", "two"], ["z"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_collected_ranges_are_exact_and_include_zero(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    stats = collect_stats(_tiny_model(tmp_path / "m.onnx"), x, batch=32, histograms=True)
    assert stats.names == ["x", "y", "z"]
    ranges = tensor_ranges(stats, {"method": "minmax"})
    assert np.isclose(ranges["x"][0], x.min()) and np.isclose(ranges["x"][1], x.max())
    assert ranges["y"][0] == 0.0 and np.isclose(ranges["z"][1], 2 * x.max())
    assert stats.hist.sum(axis=1).min() > 0


def test_percentile_ignores_a_rare_outlier():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(0, 1, 100_000), [50.0]])
    hist, _ = np.histogram(values, bins=2048, range=(0, 50))
    low, high = percentile_range(hist, 0.0, 50.0, 99.9)
    assert low == 0.0 and 0.95 < high < 1.1


def test_mse_clips_a_lone_outlier_and_never_does_worse_than_minmax():
    from edgeeff.calibration import NUM_BINS, _bin_centres, quant_error

    rng = np.random.default_rng(2)
    # A million well-behaved values and one at 100: rounding everything to a 100-wide grid costs
    # more than clipping the one outlier, so the MSE range must shrink well below 100.
    values = np.concatenate([rng.normal(0, 1, 1_000_000), [100.0]])
    lo, hi = values.min(), values.max()
    hist, _ = np.histogram(values, bins=NUM_BINS, range=(lo, hi))
    low, high = mse_range(hist, lo, hi)
    assert high < 0.5 * hi
    centres = _bin_centres(lo, hi)
    assert quant_error(centres, hist, low, high, 0, 255, False) <= quant_error(centres, hist, lo, hi, 0, 255, False)
    # Uniform data has no tail worth clipping: the full range stays.
    uniform = rng.uniform(-1, 1, 200_000)
    hist, _ = np.histogram(uniform, bins=NUM_BINS, range=(-1, 1))
    low, high = mse_range(hist, -1.0, 1.0)
    assert high > 0.95 and low < -0.95


def test_symmetric_ranges_for_zero_point_zero_targets(tmp_path):
    x = np.random.default_rng(3).normal(1.0, 1.0, size=(100, 4)).astype(np.float32)
    stats = collect_stats(_tiny_model(tmp_path / "m.onnx"), x, histograms=False)
    for low, high in tensor_ranges(stats, {"method": "minmax"}, symmetric=True).values():
        assert low == -high
