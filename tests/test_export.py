import numpy as np
import onnx
import pytest
import torch

from edgeeff.backends.onnxruntime import OrtRunner
from edgeeff.models.builder import build_model
from edgeeff.models.export import export_onnx
from edgeeff.models.family import spec_for_variant
from edgeeff.models.weights import load_model


@pytest.mark.parametrize("variant,real", [("lite0", True), ("b0", False)])
def test_fp32_onnx_matches_pytorch(tmp_path, variant, real):
    torch.manual_seed(0)
    model = load_model(variant)[0] if real else build_model(variant)  # b0: swish + SE graph
    path = export_onnx(model, 224, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # one file
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    runner = OrtRunner(path, 2, spec_for_variant(variant))
    ours = runner.predict(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert ours.shape == (3, 1000)
    assert np.abs(ours - ref).max() < 2e-3, np.abs(ours - ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()
