#!/usr/bin/env python3
"""Would per-channel scales on the depthwise convs' inputs close the swish + SE model's INT8 gap?

A depthwise conv reads each input channel alone, so multiplying channel c of its input by s_c and
dividing the conv's channel-c weights by s_c is exact in float; with s_c chosen so every channel
fills the INT8 range, the one per-tensor activation scale behaves like a per-channel one, and the
per-channel weight scales absorb 1/s_c (cross-layer equalisation, Nagel et al. 2019, applied where
swish stops it from crossing the activation: after the activation, as an explicit per-channel
multiply). OpenVINO's NNCF already quantizes depthwise inputs per channel; TensorRT, ONNX Runtime
and LiteRT take one scale per tensor.

This script asks the simulation (edgeeff/quant/simulation.py, optimise.ActivationQuantizers with
each backend's SIMULATION settings) before any graph is rewritten: INT8 agreement with the float
model (a) as the target quantizes today, (b) with the depthwise inputs per channel (symmetric,
each channel's 99.99th percentile of |x|), (c) with them left float (the bound). Ranges from the
percentile recipe on `--range-images` calibration images; agreement on `--eval` images (use
images the ranges were not taken from, never the validation set a default is judged on).

    python scripts/research/depthwise_equalisation_sim.py --weights B0.pth --calib CALIB --eval HELDOUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import common_arguments, load, logits_of  # noqa: E402

from edgeeff.models.builder import forward_with_hooks  # noqa: E402
from edgeeff.profiles import get_recipe  # noqa: E402
from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings, depthwise_input_points  # noqa: E402
from edgeeff.quant.simulation import _hook, activation_ranges, quant_points, simulated_int8  # noqa: E402

BACKENDS = {
    "tensorrt": "edgeeff.backends.tensorrt",
    "onnxruntime": "edgeeff.backends.onnxruntime",
    "litert": "edgeeff.backends.litert",
}


@torch.no_grad()
def per_channel_absmax(model, points: dict, names: list[str], batches, q: float = 0.9999) -> dict:
    """Each channel's q-quantile of |x| over the images, at each named point."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for name in names:
        module, where, _ = points[name]

        def keep(t, n=name):
            seen[n].append(t.detach().abs().transpose(0, 1).reshape(t.shape[1], -1))
            return t
        hooks.append(_hook(module, where, keep))
    forward_with_hooks(model, hooks, batches)
    out = {}
    for n, parts in seen.items():
        values = torch.cat(parts, dim=1)
        k = max(1, int(round(q * values.shape[1])))
        out[n] = values.kthvalue(k, dim=1).values.clamp_min(1e-8)
    return out


def main() -> int:
    parser = common_arguments(__doc__)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--scale-groups", action="store_true",
                        help="split the model's wide-ranged sites first (quant/scale_groups.py), as rpi and jetson do")
    parser.add_argument("--out", type=Path, default=Path("docs/results/depthwise_equalisation_sim.json"))
    args = parser.parse_args()
    import importlib

    model, batches, inputs, calibration_images = load(args)
    if args.scale_groups:
        from edgeeff.quant.scale_groups import split_for_int8

        model, split = split_for_int8(model, batches)
        print("scale groups at", [site["site"] for site in split], flush=True)
    reference = logits_of(model, inputs)
    points = quant_points(model)
    dw_points = depthwise_input_points(model, points)
    absmax = per_channel_absmax(model, points, dw_points, batches)
    spreads = {n: float(a.max() / a.median()) for n, a in absmax.items()}

    rows = []
    for backend in args.backends:
        simulation = getattr(importlib.import_module(BACKENDS[backend]), "SIMULATION", {})
        base = {k: v for k, v in simulation.items() if k != "float_depthwise_inputs"}
        ranges = activation_ranges(model, batches, get_recipe("percentile"), symmetric=base.get("symmetric", False))
        for mode in ("per-tensor", "per-channel", "float"):
            settings = OptimiseSettings(**base, float_depthwise_inputs=mode != "per-tensor")
            with simulated_int8(model, ranges, activations=[]):  # weights: per-channel INT8
                acts = ActivationQuantizers.for_settings(model, ranges, torch.Generator().manual_seed(0), settings)
                extra = []
                if mode == "per-channel":
                    for name in dw_points:
                        module, where, _ = points[name]
                        scale = (absmax[name] / 127).view(1, -1, 1, 1)
                        extra.append(_hook(module, where, lambda t, s=scale: torch.clamp(torch.round(t / s), -127, 127) * s))
                try:
                    logits = logits_of(model, inputs)
                finally:
                    acts.remove()
                    for h in extra:
                        h.remove()
            agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean()) * 100
            rel = float(((logits - reference).norm() / reference.norm()))
            rows.append({"backend": backend, "depthwise_inputs": mode, "agreement": round(agreement, 2),
                         "relative_logit_error": round(rel, 4)})
            print(f"{backend:<12} {mode:<12} agreement {agreement:6.2f}%  rel. logit error {rel:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": {k: str(v) for k, v in vars(args).items()},
                                    "eval_images": len(inputs), "range_images": calibration_images,
                                    "depthwise_input_points": dw_points,
                                    "channel_spread_max_over_median": spreads, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
