#!/usr/bin/env python3
"""Where does the `jetson` target lose agreement on a swish + SE model? The simulation, by kind of point.

TensorRT's arithmetic as edgeeff's search simulates it (tensorrt.SIMULATION: symmetric per-tensor
activations, no quantizer on conv outputs before swish, inside the SE convs or on a residual
branch before its Add; per-channel INT8 weights) on the model `jetson-orin` compiles (scale groups
split first). The activation quantizers are grouped by what reads them (the depthwise convs'
inputs, the depthwise outputs that the SE pool and multiply read, the SE's inner vectors, the SE
gate, the project convs' inputs, the block outputs, the head) and each group is measured two ways:
left float while everything else is INT8 (what the group costs in the full model) and quantized
alone. Two more rows: weights only, and the same placement with asymmetric activations (what
TensorRT's zero point 0 costs).

Ranges from the target's recipe (`--recipe`, jetson's `mse` by default, symmetric) on
`--range-images` calibration images; agreement with the float model on `--eval` images (use
images the ranges were not taken from, never the validation set a default is judged on).

    python scripts/research/tensorrt_point_ablation.py --weights B0.pth --calib CALIB --eval HELDOUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import common_arguments, load, logits_of  # noqa: E402

from edgeeff.backends.tensorrt import SIMULATION  # noqa: E402
from edgeeff.profiles import get_recipe  # noqa: E402
from edgeeff.quant.optimise import (  # noqa: E402
    ActivationQuantizers,
    OptimiseSettings,
    depthwise_input_points,
    residual_branch_points,
)
from edgeeff.quant.simulation import activation_ranges, quant_points, simulated_int8  # noqa: E402


def groups_of(model, points: dict, quantized: list[str]) -> dict[str, list[str]]:
    """The quantized points by what reads them."""
    depthwise_inputs = set(depthwise_input_points(model, points))
    groups: dict[str, list[str]] = {}

    def kind(name: str) -> str:
        if name == "input":
            return "model input"
        if name in depthwise_inputs:
            return "depthwise inputs"
        if name.endswith(".dw.act"):
            return "depthwise outputs (SE pool + multiply)"
        if name.endswith((".se.pooled", ".se.act")):
            return "SE inner vectors"
        if name.endswith(".se.gate"):
            return "SE gate"
        if name.endswith(".se.out"):
            return "project inputs (SE output)"
        if name.endswith((".sum", ".project.out", ".out")) and name.startswith("blocks."):
            return "block outputs"
        if name.startswith(("head", "pooled")):
            return "head"
        return "other"
    for name in quantized:
        groups.setdefault(kind(name), []).append(name)
    return groups


def main() -> int:
    parser = common_arguments(__doc__)
    parser.add_argument("--recipe", default="mse")
    parser.add_argument("--no-scale-groups", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs/results/tensorrt_point_ablation_b0.json"))
    args = parser.parse_args()
    model, batches, inputs, calibration_images = load(args)
    if not args.no_scale_groups:
        from edgeeff.quant.scale_groups import split_for_int8

        model, split = split_for_int8(model, batches)
        print("scale groups at", [site["site"] for site in split], flush=True)
    reference = logits_of(model, inputs)
    points = quant_points(model)
    recipe = get_recipe(args.recipe)
    symmetric_ranges = activation_ranges(model, batches, recipe, symmetric=True)
    asymmetric_ranges = activation_ranges(model, batches, recipe, symmetric=False)
    settings = OptimiseSettings(**SIMULATION)
    probe = ActivationQuantizers.for_settings(model, symmetric_ranges, torch.Generator(), settings)
    quantized = list(probe.modules)
    probe.remove()
    groups = groups_of(model, points, quantized)
    print({g: len(n) for g, n in groups.items()}, flush=True)

    reference_log_p = torch.log_softmax(reference, 1)

    def measure(label: str, active: list[str], weights: bool = True, symmetric: bool = True,
                asymmetric_points: frozenset = frozenset()) -> dict:
        """INT8 at `active` (symmetric unless `symmetric` is False, or the point is in
        `asymmetric_points`: a zero point, as a shift folded into the next conv's bias gives TensorRT)."""
        ranges = symmetric_ranges if symmetric else asymmetric_ranges
        keep = set(active)
        sym = {n: r for n, r in ranges.items() if n in keep and n not in asymmetric_points}
        asym = {n: r for n, r in asymmetric_ranges.items() if n in keep and n in asymmetric_points}
        with simulated_int8(model, ranges, weights=weights, activations=[]):
            acts = [ActivationQuantizers(model, sym, torch.Generator(), symmetric=symmetric),
                    ActivationQuantizers(model, asym, torch.Generator(), symmetric=False)]
            try:
                logits = logits_of(model, inputs)
            finally:
                for a in acts:
                    a.remove()
        agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean()) * 100
        rel = float((logits - reference).norm() / reference.norm())
        # KL(FP32 || INT8) per image, averaged: smoother than agreement (one image = 1/len(inputs)).
        kl = float(torch.nn.functional.kl_div(torch.log_softmax(logits, 1), reference_log_p, log_target=True,
                                              reduction="batchmean"))
        row = {"case": label, "points": len(active), "weights_int8": weights, "symmetric": symmetric,
               "asymmetric_points": len(asymmetric_points), "agreement": round(agreement, 2),
               "relative_logit_error": round(rel, 4), "kl_divergence": round(kl, 5)}
        print(f"{label:<66} points {len(active):>3}  agreement {agreement:6.2f}%  rel. logit error {rel:.4f}"
              f"  KL {kl:.5f}", flush=True)
        return row

    rows = [measure("all (jetson as simulated)", quantized),
            measure("all, asymmetric activations", quantized, symmetric=False),
            measure("weights only", [], weights=True),
            measure("activations only (float weights)", quantized, weights=False)]
    # Where a zero point would pay (TensorRT has none; a shift before the Q, folded into the next
    # 1x1 conv's bias, is exact where that conv has no padding: the project convs' inputs).
    project_inputs = frozenset(groups.get("project inputs (SE output)", []))
    depthwise_inputs = frozenset(groups.get("depthwise inputs", []))
    rows += [measure("all, asymmetric at the project inputs only", quantized, asymmetric_points=project_inputs),
             measure("all, asymmetric at the depthwise inputs only", quantized, asymmetric_points=depthwise_inputs),
             measure("all, asymmetric at both", quantized, asymmetric_points=project_inputs | depthwise_inputs)]
    for group, names in groups.items():
        rest = [n for n in quantized if n not in set(names)]
        rows.append(measure(f"all but {group} (left float)", rest))
    for group, names in groups.items():
        rows.append(measure(f"{group} alone (float weights)", names, weights=False))
    per_point = {}
    for name in groups.get("project inputs (SE output)", []):
        per_point[name] = measure(f"  {name} alone (float weights)", [name], weights=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": {k: str(v) for k, v in vars(args).items()},
                                    "eval_images": len(inputs), "range_images": calibration_images,
                                    "simulation": {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in SIMULATION.items()},
                                    "residual_branches_float": residual_branch_points(points),
                                    "groups": groups, "rows": rows, "per_point": per_point}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
