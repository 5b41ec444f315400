"""The ONNX Runtime backend's graph choices, checked on the graph ONNX Runtime really runs."""

import numpy as np
import onnx
import onnxruntime as ort

from edgeeff.backends.onnxruntime import quantize, spatial_means_as_global_pools

from .graphs import tiny_efficientnet


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _optimised_ops(path, tmp_path) -> list[str]:
    """The node types of the graph ONNX Runtime runs after its own optimisation (ORT_ENABLE_ALL)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]


def test_spatial_means_become_global_pools_with_the_same_outputs():
    model = tiny_efficientnet()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    before = _run(model, x)
    assert spatial_means_as_global_pools(model) == 2  # the SE squeeze (keepdims) and the head (no keepdims)
    assert [n.op_type for n in model.graph.node].count("ReduceMean") == 0
    assert {n.name for n in model.graph.node} >= {"se_pool", "head_pool"}  # names kept for the fallback maps
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_int8_squeeze_excitation_pools_run_on_integer_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEFF_CACHE", str(tmp_path / "cache"))
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(tiny_efficientnet(), str(fp32))
    calib = np.random.default_rng(1).normal(size=(8, 3, 16, 16)).astype(np.float32)
    details = quantize(fp32, tmp_path / "int8.onnx", calib, {"method": "minmax"},
                       {"activations": "uint8", "weights": "int8", "per_channel": True}, quiet=True)
    assert details["global_average_pools"] == 2
    ops = _optimised_ops(tmp_path / "int8.onnx", tmp_path)
    # Both means are fused into ORT's integer pool; no float ReduceMean island (with its DQ/Q) is left.
    assert ops.count("QLinearGlobalAveragePool") == 2, ops
    assert "ReduceMean" not in ops and "GlobalAveragePool" not in ops, ops
