"""edgeeff: compile EfficientNets into verified INT8 artifacts for edge devices.

    import edgeeff
    report, folder = edgeeff.compile(variant="lite0", target="onnx", calib="calib/", val="val/", quiet=True)
    scores = edgeeff.evaluate(folder / "model_int8.onnx", val="val/", quiet=True)

The functions are loaded on first use (edgeeff.api): `import edgeeff` stays light, without torch.
"""

from .version import __version__

__all__ = ["compile", "evaluate", "__version__"]


def __getattr__(name: str):
    if name in ("compile", "evaluate"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeeff' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"compile", "evaluate"})
