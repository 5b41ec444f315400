import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeeff.quant.calibration import collect_stats, mse_range, percentile_range, tensor_ranges


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
    from edgeeff.quant.calibration import NUM_BINS, _bin_centres, quant_error

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


def test_histogram_sample_sees_every_column_of_a_7_wide_map(tmp_path):
    """A flat stride of 7 over (N, C, 7, 7) maps sampled only column 0: a map whose large values
    sit off the left edge must still reach its true percentile."""
    from edgeeff.quant.calibration import histogram_stride

    for shape in [(10, 1152, 7, 7), (10, 1280, 7, 7), (10, 96, 56, 56), (10, 32, 112, 112), (10, 1280)]:
        per_sample = int(np.prod(shape[1:]))
        assert np.gcd(histogram_stride(shape), per_sample) == 1 and histogram_stride(shape) >= 7
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "map",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 7, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "map.onnx"))
    x = np.zeros((40, 4, 7, 7), np.float32)
    x[:, :, :, 1:] = np.random.default_rng(0).uniform(0.5, 1.0, (40, 4, 7, 6))  # column 0 stays 0
    stats = collect_stats(tmp_path / "map.onnx", x, batch=10, histograms=True)
    low, high = tensor_ranges(stats, {"method": "percentile", "percentile": 99.0})["y"]
    assert high > 0.9  # column 0 alone would give 0


def _hswish_model(path, decomposed: bool, extra_consumer: bool = False):
    """x -> [HardSwish | HardSigmoid + Mul] -> y (and, optionally, x also -> Relu -> r)."""
    if decomposed:
        nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["x", "g"], ["y"])]
    else:
        nodes = [helper.make_node("HardSwish", ["x"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return model


def test_hard_swish_inputs_are_floored_at_minus_3(tmp_path):
    from edgeeff.quant.calibration import activation_floors

    for decomposed in (True, False):
        model = _hswish_model(tmp_path / "hs.onnx", decomposed)
        floors = activation_floors(model)
        assert floors.keys() == {"x"} and np.isclose(floors["x"], -3.0)
        x = np.random.default_rng(0).normal(0, 10, (200, 4)).astype(np.float32)  # reaches about -30
        stats = collect_stats(tmp_path / "hs.onnx", x, batch=50, histograms=False)
        plain = tensor_ranges(stats, {"method": "minmax"})
        floored = tensor_ranges(stats, {"method": "minmax"}, floors=floors)
        assert plain["x"][0] < -20 and np.isclose(floored["x"][0], -3.0)
        assert floored["x"][1] == plain["x"][1] and floored["y"] == plain["y"]
    # A tensor something else reads too keeps its full range: below -3 matters there.
    assert activation_floors(_hswish_model(tmp_path / "hs2.onnx", True, extra_consumer=True)) == {}


def test_memory_bounded_calls_give_the_same_statistics(tmp_path):
    """A budget too small for one batch (calls of 2 images, and of 1 image with the tensors in
    groups) changes how the calibration runs, never what it finds: the same ranges and the same
    histogram subsample as one call over each batch."""
    from edgeeff.quant.calibration import bounded_runs

    path = _tiny_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    whole = collect_stats(path, x, batch=10, histograms=True)
    for budget in (2 * 3 * 16, 16 * 2):  # per image: 3 tensors x 16 bytes
        split = collect_stats(path, x, batch=10, histograms=True, budget_bytes=budget)
        assert split.names == whole.names
        np.testing.assert_array_equal(split.minimum, whole.minimum)
        np.testing.assert_array_equal(split.maximum, whole.maximum)
        np.testing.assert_array_equal(split.hist, whole.hist)

    class Recording:  # how bounded_runs calls the session: images per call and tensors per call
        calls = []

        def run(self, names, feed):
            self.calls.append((len(feed["x"]), tuple(names)))
            return [np.zeros((len(feed["x"]), 4), np.float32) for _ in names]

    session = Recording()
    list(bounded_runs(session, "x", ["x", "y", "z"], {"x": 16, "y": 16, "z": 16}, x[:10], budget_bytes=32,
                      group_budget_bytes=32))
    assert session.calls[:2] == [(1, ("x", "y")), (1, ("z",))] and len(session.calls) == 20
    # One image's tensors go in groups as large as the group budget allows (each group is a whole
    # forward pass): here all three in one call per image.
    session.calls.clear()
    list(bounded_runs(session, "x", ["x", "y", "z"], {"x": 16, "y": 16, "z": 16}, x[:10], budget_bytes=32,
                      group_budget_bytes=48))
    assert session.calls == [(1, ("x", "y", "z"))] * 10


def test_evaluation_calls_shrink_with_the_image_size():
    """predict_all feeds a runtime fewer images per call as they grow (scoring.images_per_call):
    B3's 300 px fewer than 224 px, B7's 600 px fewer still, never below one, never above what the
    runner or the caller allows; and the logits are the same whatever the split."""
    from edgeeff.scoring import images_per_call, predict_all

    def crops(size, n=1):
        return np.zeros((n, size, size, 3), np.uint8)

    assert 16 <= images_per_call(crops(224), 64) < 64
    assert images_per_call(crops(300), 64) < images_per_call(crops(224), 64)
    assert images_per_call(crops(600), 64) < images_per_call(crops(300), 64)
    assert images_per_call(crops(4000), 64) == 1
    assert images_per_call(crops(224), 1) == 1 and images_per_call(crops(224), 64, batch=8) == 8

    class Recorder:
        max_batch = 64
        calls = []

        class spec:
            @staticmethod
            def to_model_input(chunk):
                return chunk.astype(np.float32)

        def predict(self, x):
            self.calls.append(len(x))
            return x.reshape(len(x), -1)[:, :2]

    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (20, 600, 600, 3), dtype=np.uint8)
    runner = Recorder()
    logits = predict_all(runner, big, quiet=True)
    assert max(runner.calls) == images_per_call(big, 64) < 20 and sum(runner.calls) == 20
    assert np.array_equal(logits, big.reshape(20, -1)[:, :2].astype(np.float32))


def test_jetson_takes_the_onnx_targets_statistics_only_when_they_are_its_own(tmp_path, monkeypatch):
    """--target onnx,jetson collects the calibration statistics once: the jetson graph (TensorRT's
    opset and pools) takes those of ONNX Runtime's prepared graph of the same export when every
    tensor is there with bit-identical values, and they then equal its own collection exactly; a
    graph whose values differ (other weights) gets None and collects its own."""
    from onnx import numpy_helper

    from edgeeff.backends.onnxruntime import prepare_for_quantizer
    from edgeeff.quant.calibration import collect_stats, stats_from_equivalent_graph
    from edgeeff.quant.qdq import prepare_for_tensorrt

    from .graphs import tiny_efficientnet

    monkeypatch.setenv("EDGEEFF_CACHE", "off")
    export = tmp_path / "export.onnx"
    onnx.save(tiny_efficientnet(), export)
    jetson = tmp_path / "jetson.onnx"
    onnx.save(prepare_for_tensorrt(onnx.load(export), 17), jetson)
    ort_prepared = tmp_path / "prepared.onnx"
    prepare_for_quantizer(export, ort_prepared)
    inputs = np.random.default_rng(3).normal(size=(12, 3, 16, 16)).astype(np.float32)

    shared = stats_from_equivalent_graph(jetson, ort_prepared, inputs, batch=4)
    assert shared is not None
    taken, _hit = shared
    own = collect_stats(jetson, inputs, batch=4)
    assert taken.names == own.names
    np.testing.assert_array_equal(taken.minimum, own.minimum)
    np.testing.assert_array_equal(taken.maximum, own.maximum)
    np.testing.assert_array_equal(taken.hist, own.hist)

    other = onnx.load(ort_prepared)
    weight = other.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(other, tmp_path / "other.onnx")
    assert stats_from_equivalent_graph(jetson, tmp_path / "other.onnx", inputs, batch=4) is None
