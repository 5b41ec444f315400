#!/usr/bin/env python3
"""Would per-channel smoothing of the project convs' inputs close the swish + SE model's INT8 gap?

`tensorrt_point_ablation.py` found that on the B0 test model most of the simulated `jetson` error
sits at one kind of point: the squeeze-excitation's output, which the 1x1 project conv reads
(left float, the relative logit error halves, 0.40 -> 0.20; quantized alone it costs 0.33).
Its channels differ widely in range, and one per-tensor scale serves them all.

The project conv is linear in its input, so dividing input channel c by s_c and multiplying the
conv's input-channel-c weights by s_c is exact in float. The division is folded into the SE gate
(one multiply of the [N, C, 1, 1] gate vector by a constant, which a runtime fuses with the
sigmoid and the SE multiply), the multiplication into the weights, whose per-output-channel INT8
scales then carry part of the input's spread (SmoothQuant, Xiao et al. 2023:
s_c = max|x_c|^alpha / max|w_c|^(1 - alpha)).

This script asks the simulation before any graph is rewritten: agreement with the float model
and the relative logit error, per target's simulated arithmetic (tensorrt, onnxruntime, litert
SIMULATION), for alpha in `--alphas` (0 = today). Ranges from the target's recipe on
`--range-images` calibration images, recomputed after smoothing; agreement on `--eval` images
(images the ranges were not taken from, never the validation set a default is judged on).

    python scripts/research/project_input_smoothing_sim.py --weights B0.pth --calib CALIB --eval HELDOUT
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import common_arguments, load, logits_of  # noqa: E402

from edgeeff.models.builder import forward_with_hooks  # noqa: E402
from edgeeff.profiles import get_recipe  # noqa: E402
from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings  # noqa: E402
from edgeeff.quant.simulation import activation_ranges, simulated_int8  # noqa: E402

BACKENDS = {  # backend -> (module with SIMULATION, range recipe its target uses for swish models)
    "tensorrt": ("edgeeff.backends.tensorrt", "mse"),
    "onnxruntime": ("edgeeff.backends.onnxruntime", "percentile"),
    "litert": ("edgeeff.backends.litert", "percentile"),
}


@torch.no_grad()
def se_output_absmax(model, batches) -> dict[int, torch.Tensor]:
    """Per block with SE: each channel's max |x| of the SE output over the images."""
    seen, hooks = {}, []
    for i, block in enumerate(model.blocks):
        if getattr(block, "se", None) is None:
            continue

        def keep(_m, _a, out, i=i):
            m = out.detach().abs().amax((0, 2, 3))
            seen[i] = m if i not in seen else torch.maximum(seen[i], m)
        hooks.append(block.se.register_forward_hook(keep))
    forward_with_hooks(model, hooks, batches)
    return seen


def folded_weight(conv_bn) -> torch.Tensor:
    """The project conv's weight with BatchNorm folded (what the runtime's INT8 weights are)."""
    bn = conv_bn.bn
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv_bn.conv.weight.detach() * factor.view(-1, 1, 1, 1)


@torch.no_grad()
def smoothed(model, absmax: dict[int, torch.Tensor], alpha: float):
    """A copy whose SE outputs are divided by s (a hook standing for the gate's constant multiply)
    and whose project convs' input channels are multiplied by s."""
    model = copy.deepcopy(model)
    if alpha == 0:
        return model
    for i, x_max in absmax.items():
        block = model.blocks[i]
        w_max = folded_weight(block.project).abs().amax((0, 2, 3)).clamp_min(1e-8)
        s = (x_max.clamp_min(1e-8) ** alpha / w_max ** (1 - alpha)).clamp_min(1e-5)
        block.project.conv.weight.mul_(s.view(1, -1, 1, 1))
        block.se.register_forward_hook(lambda _m, _a, out, s=s.view(1, -1, 1, 1): out / s)
    return model


def main() -> int:
    parser = common_arguments(__doc__)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--out", type=Path, default=Path("docs/results/project_input_smoothing_sim_b0.json"))
    args = parser.parse_args()
    base, batches, inputs, calibration_images = load(args)
    rows = []
    for backend in args.backends:
        module_name, recipe_name = BACKENDS[backend]
        simulation = getattr(importlib.import_module(module_name), "SIMULATION", {})
        settings = OptimiseSettings(**simulation)
        split_model = base
        if backend in ("tensorrt", "litert"):  # the targets that split scale groups by default
            from edgeeff.quant.scale_groups import split_for_int8

            split_model, _ = split_for_int8(copy.deepcopy(base), batches)
        reference = logits_of(split_model, inputs)
        absmax = se_output_absmax(split_model, batches)
        for alpha in args.alphas:
            model = smoothed(split_model, absmax, alpha)
            ranges = activation_ranges(model, batches, get_recipe(recipe_name), symmetric=settings.symmetric)
            with simulated_int8(model, ranges, activations=[]):
                acts = ActivationQuantizers.for_settings(model, ranges, torch.Generator().manual_seed(0), settings)
                try:
                    logits = logits_of(model, inputs)
                finally:
                    acts.remove()
            agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean()) * 100
            rel = float((logits - reference).norm() / reference.norm())
            rows.append({"backend": backend, "recipe": recipe_name, "alpha": alpha,
                         "agreement": round(agreement, 2), "relative_logit_error": round(rel, 4)})
            print(f"{backend:<12} {recipe_name:<11} alpha {alpha:4.2f}  agreement {agreement:6.2f}%  "
                  f"rel. logit error {rel:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": {k: str(v) for k, v in vars(args).items()},
                                    "eval_images": len(inputs), "range_images": calibration_images,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
