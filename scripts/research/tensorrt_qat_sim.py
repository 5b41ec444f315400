#!/usr/bin/env python3
"""Would quantization-aware fine-tuning close the `jetson` gap of a swish + SE model? Simulated first.

The INT8 arithmetic `jetson-orin` compiles (scale groups split, tensorrt.SIMULATION: symmetric
per-tensor activations, nothing quantized before a swish, inside the SE convs or on a residual
branch; per-channel INT8 weights; the project convs' inputs centred, i.e. asymmetric, as
`centre_pointwise_inputs` gives TensorRT) is simulated in PyTorch with straight-through rounding,
(since 2026-12-06 as TensorRT computes them: x - m on a symmetric grid; the first run, whose
figures docs/jetson.md gives, simulated them as asymmetric quantizers with an integer zero point),
and the whole model's weights are fine-tuned to imitate the FP32 model (distillation: KL between
the softened logits) on augmented calibration images, ranges fixed. BatchNorm statistics stay
frozen (eval mode): what is learned is the weights and BN's affine parameters.

Agreement and KL with the FP32 model are measured in the same simulation on `--eval` images the
fine-tuning never saw (use images outside the calibration set, never the validation set a default
is judged on), before and every `--every` steps. JSON: `--out`.

    python scripts/research/tensorrt_qat_sim.py --weights B0.pth --calib CALIB300 --eval HELDOUT200
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from simulation_setup import common_arguments, load, logits_of  # noqa: E402

from edgeeff.backends.tensorrt import CENTRED_POINTS, SIMULATION  # noqa: E402
from edgeeff.data.images import load_calibration  # noqa: E402
from edgeeff.models.distill import augment_batch, kd_loss  # noqa: E402
from edgeeff.models.family import spec_for_variant  # noqa: E402
from edgeeff.profiles import get_recipe  # noqa: E402
from edgeeff.quant.optimise import ActivationQuantizers, OptimiseSettings  # noqa: E402
from edgeeff.quant.simulation import activation_ranges, simulated_int8  # noqa: E402
from edgeeff.scoring import torch_batches  # noqa: E402


def main() -> int:
    parser = common_arguments(__doc__)
    parser.add_argument("--recipe", default="mse")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--augment", default="rrc-flip")
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("docs/results/tensorrt_qat_sim_b0.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, batches, inputs, _ = load(args)
    from edgeeff.quant.scale_groups import split_for_int8

    student, _ = split_for_int8(teacher, batches)
    student.eval()
    spec = spec_for_variant(args.variant)
    train = torch.cat(list(torch_batches(load_calibration(args.calib, args.train_images, spec).crops, spec, 50)))
    reference = logits_of(teacher, inputs)
    recipe = get_recipe(args.recipe)
    settings = OptimiseSettings(**SIMULATION, asymmetric_points=CENTRED_POINTS)
    ranges = activation_ranges(student, batches, recipe, symmetric=True, asymmetric_points=CENTRED_POINTS)
    rows = []

    def measure(step: int, seconds: float) -> None:
        logits = logits_of(student, inputs)
        agreement = 100 * float((logits.argmax(1) == reference.argmax(1)).float().mean())
        kl = float(torch.nn.functional.kl_div(torch.log_softmax(logits, 1), torch.log_softmax(reference, 1),
                                              log_target=True, reduction="batchmean"))
        rows.append({"step": step, "agreement": round(agreement, 2), "kl_divergence": round(kl, 5),
                     "seconds": round(seconds, 1)})
        print(f"step {step:4d}  agreement {agreement:6.2f}%  KL {kl:.5f}  ({seconds:.0f} s)", flush=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))

    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with simulated_int8(student, ranges, weights=True, activations=[]):
        # after the weights' parametrization is registered: it holds the trained tensors
        optimiser = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=0.0)
        acts = [ActivationQuantizers.for_settings(student, ranges, torch.Generator(), settings)]
        with torch.no_grad():
            measure(0, 0.0)
        for step in range(1, args.steps + 1):
            index = torch.randint(0, len(train), (args.batch,), generator=gen)
            x = augment_batch(train[index], args.augment, gen)
            with torch.no_grad():
                target = teacher(x)
            loss = kd_loss(student(x), target, args.temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % args.every == 0 or step == args.steps:
                with torch.no_grad():
                    measure(step, time.perf_counter() - start)
        for a in acts:
            a.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
