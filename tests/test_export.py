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


V2_VARIANTS = ("v2-b0", "v2-b1", "v2-b2", "v2-b3", "v2-s", "v2-m", "v2-l",
               "v2-rw-s")  # rw_t and rw_m: V2-S and rw_s tables scaled (their counts: test_family)


@pytest.mark.parametrize("variant", V2_VARIANTS)
def test_v2_fp32_onnx_matches_pytorch_within_1e4(tmp_path, variant):
    """Every V2 variant's graph (Fused-MBConv, SE in MBConv stages only, TF padding) exports exactly.

    A freshly built model's logits are its classifier's bias (~0.03) whatever the image, so its batch
    norms get these images' statistics and the classifier a scale that spreads the logits like a
    trained model's (std 5). Such a model is ill-conditioned: PyTorch's own float32 logits differ
    from its float64 ones by ~1e-4 on V2-B0 and more on the deeper M and L. So the bar for every
    variant is that the ONNX logits are as close to float64 PyTorch as float32 PyTorch is (the export
    adds no error of its own); the 1e-4 bound against float32 PyTorch (per unit of logit spread: 1e-4
    absolute at std-1 logits) is asserted where float32 PyTorch itself is that close to float64 (B0-B3,
    S; measured on M and L at std 5: 5.1e-4 and 1.2e-3, inside float32's own error there).
    96 px: the graph is the variant's at any size."""
    torch.manual_seed(0)
    model = build_model(variant)
    x = np.random.default_rng(0).normal(size=(8, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = None  # running statistics = these images' (cumulative average)
        model.train()(torch.from_numpy(x))
        model.eval().classifier.bias.zero_()
        model.classifier.weight.mul_(5 / model(torch.from_numpy(x)).std())
        ref = model(torch.from_numpy(x)).numpy()
        exact = model.double()(torch.from_numpy(x).double()).numpy()
    path = export_onnx(model.float(), 96, tmp_path / "m.onnx")
    ours = OrtRunner(path, 2, spec_for_variant(variant)).predict(x)
    assert len(set(ref.argmax(1).tolist())) > 1  # logits that depend on the image
    assert np.abs(ours - exact).max() <= 2 * np.abs(ref - exact).max() + 1e-6
    if np.abs(ref - exact).max() < 0.5e-4 * ref.std():
        assert np.abs(ours - ref).max() < 1e-4 * ref.std(), (np.abs(ours - ref).max(), ref.std())
