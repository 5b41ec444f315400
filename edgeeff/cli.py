"""Command line: `edgeeff compile | eval | report | sweep | sensitivity | variants | targets`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import choices, progress
from .errors import AccuracyGateError, UserError
from .version import __version__

EPILOG = "Docs: README.md and docs/ in the edgeeff repository."


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val", type=Path, help="validation images: ImageFolder tree (folders = synsets) or a `path label` list file")
    p.add_argument("--synsets", type=Path, help="label file, line N = class N: '<synset> <name>' or the name alone, "
                   "spaces allowed (default: ImageNet-1k; eval: the labels.txt beside the artifact)")
    p.add_argument("--threads", type=int, help="CPU threads for evaluation and latency (default: the target's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")


def _add_compile_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("--variant", required=True, help="b0..b7, lite0..lite4, v2-b0..v2-b3, v2-s/m/l, v2-rw-t/s/m, or an alias such as "
                        "tf_efficientnetv2_s (`edgeeff variants`)")
    c.add_argument("--calib", type=Path, help="folder of calibration images (default: scikit-image's sample photos)")
    c.add_argument("--calib-count", type=int, default=300, help="calibration images to use (default 300)")
    c.add_argument("--calib-method", help="calibration recipe from calib/ (minmax, percentile, entropy) or a .toml path")
    c.add_argument("--weights", type=Path, help="checkpoint: timm, torchvision, lukemelas, TF-ported or edgeeff state dict")
    c.add_argument("--weights-format", default="auto",
                   choices=choices.WEIGHT_FORMATS)
    c.add_argument("--trust-pickle", action="store_true",
                   help="--weights may be a pickled whole model (torch.save(model)): unpickling runs code from "
                        "the file, so only for files you trust; a state dict or TorchScript file needs no flag")
    c.add_argument("--weights-key", metavar="ENTRY",
                   help="the entry of a training checkpoint to read (default: state_dict_ema when there is "
                        "one, as timm evaluates it, else state_dict, model, ...; docs/weights.md)")
    c.add_argument("--conventions", choices=choices.CONVENTION_NAMES,
                   help="padding and BatchNorm eps the weights were trained with: tf ('same', 1e-3: TF ports, "
                        "timm's tf_efficientnet_*) or pytorch (symmetric, 1e-5: timm's efficientnet_*); only "
                        "needed when the checkpoint records no arch and the calibration images cannot tell "
                        "(docs/weights.md)")
    c.add_argument("--random-weights", action="store_true", help="random weights (latency/size studies only)")
    c.add_argument("--out", type=Path, default=Path("out"), help="output root; writes OUT/<variant>[-<act>][-nose][-kd]-<target>/")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.add_argument("--latency-runs", type=int, default=50, help="timed batch-1 runs per artifact")
    c.add_argument("--max-drop", type=float, metavar="PTS",
                   help="keep the most sensitive layers in float until the INT8 artifact's top-1 drop (on fewer "
                        "than 5000 validation images: its disagreement with FP32) is at most PTS; exit with "
                        "code 4 (after writing the report) if it still is not")
    c.add_argument("--max-float-layers", type=int, metavar="N",
                   help="--max-drop fallback limit: layers it may keep in float (default: 10%% of them)")
    c.add_argument("--io", choices=choices.IO_DTYPES,
                   help="integer .tflite targets (rpi, android, ios): the INT8 file's input/output type "
                        "(default int8, the fastest; uint8 adds a QUANTIZE op at each end)")
    c.add_argument("--scale-groups", choices=choices.SCALE_GROUP_SETTINGS,
                   help="split channels whose ranges differ widely into groups with their own INT8 scale "
                        "(exact in float; default: the target's, auto for rpi/android/ios; docs/variants.md)")
    c.add_argument("--optimize", choices=choices.OPTIMIZE_SETTINGS,
                   help="optimise the INT8 model against the FP32 model on calibration images: ranges "
                        "searches each activation range block by block, refine learns them all at once against "
                        "the FP32 logits, rounding also learns each weight's rounding and bakes it into the "
                        "artifact (default: the target's for the model's activation; "
                        "docs/quantization.md)")
    c.add_argument("--optimize-steps", type=int, metavar="N",
                   help="--optimize rounding: learning steps per block (default 20)")
    c.add_argument("--optimize-refine-steps", type=int, metavar="N",
                   help="--optimize: after the range search, learn every range at once against the FP32 "
                        "logits on every calibration image for N steps (default: the target's, 48 on jetson-orin "
                        "for swish models, else 0: off; docs/quantization.md)")
    c.add_argument("--optimize-minutes", type=float, metavar="M",
                   help="--optimize: time budget (default 3), turned into fewer search images and steps "
                        "for big models by a cost model measured on a 2-core host, so a compile stays "
                        "reproducible; report.json's optimisation.budget says what was planned")
    c.add_argument("--workers", type=int, metavar="N",
                   help="--sensitivity and --max-drop: evaluate the layers as Ray tasks, N at a time (a local "
                        "Ray with N CPUs; needs edgeeff[sweep]; the ranking is the serial one: docs/sweep.md)")
    c.add_argument("--address", metavar="HOST:PORT",
                   help="with --workers (and for `sweep`): join this Ray cluster instead of starting a local "
                        "Ray (default: RAY_ADDRESS if set)")
    v = c.add_argument_group("variants (docs/variants.md)")
    v.add_argument("--act", choices=choices.ACTIVATIONS,
                   help="swap every activation of the loaded model (default: keep the model's own)")
    v.add_argument("--se", choices=choices.SE_CHOICES,
                   help="remove squeeze-excitation: each block's mean gate over the calibration images is "
                        "folded into the next conv (exact when the gate is constant)")
    v.add_argument("--recover", choices=choices.RECOVER_METHODS, default="none",
                   help="recover the variant's accuracy by distillation from the original on unlabelled images")
    v.add_argument("--recover-minutes", type=float, metavar="N",
                   help="wall-clock budget for recovery (default 15 without --recover-steps, none with it); "
                        "the step count is planned from it")
    v.add_argument("--recover-steps", type=int, metavar="N",
                   help="exact number of recovery steps (reproducible), never cut by a default budget; "
                        "--recover-minutes, if given too, caps it")
    v.add_argument("--recover-params", choices=choices.RECOVER_PARAMS,
                   help="what recovery trains: all = every weight (default), bn = BatchNorm scales/shifts and biases only")
    v.add_argument("--recover-lr", type=float, metavar="LR",
                   help="AdamW learning rate (default 1e-3 with --recover-params bn, 3e-5 with all)")
    v.add_argument("--recover-temperature", type=float, metavar="T", help="distillation temperature (default 2)")
    v.add_argument("--recover-batch", type=int, metavar="N", help="images per step (default 16)")
    v.add_argument("--recover-quant-aware", type=float, metavar="F",
                   help="train the last fraction F of the steps with INT8 simulated (0-1; default 0: "
                        "measured no better on the B0 test model, docs/variants.md)")
    v.add_argument("--train", type=Path, metavar="DIR",
                   help="unlabelled images for recovery (default: the --calib folder, every image in it)")
    v.add_argument("--seed", type=int, default=0, help="seed for recovery (default 0)")
    _add_data_flags(c)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line (argparse prints the whole usage,
    17 lines for compile, before the message), ending with where the full usage is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


class RaisingParser(_Parser):
    """The same parser for the Python API (api.py): a mistake is a UserError, never an exit, and
    an option is spelled out (argparse would take `calib_c=8` as --calib-count: a typo must not run)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str):
        raise UserError(message)


def build_parser(parser_class: type[argparse.ArgumentParser] = _Parser) -> argparse.ArgumentParser:
    # Subparsers are built with the parent's class, so one class decides how every command errs.
    parser = parser_class(prog="edgeeff", description="Compile EfficientNets into verified INT8 edge artifacts.",
                          epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edgeeff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="build, quantize and verify artifacts for a target")
    c.add_argument("--target", required=True,
                   help="device target, e.g. onnx (`edgeeff targets`); several: onnx,intel,rpi; every one: all")
    _add_compile_flags(c)
    c.add_argument("--sensitivity", action="store_true",
                   help="also rank every layer by the error its quantization alone causes (report.json 'sensitivity')")

    s = sub.add_parser("sensitivity", help="per-layer quantization sensitivity on several targets, compared")
    s.add_argument("--targets", default="onnx,intel,jetson",
                   help="comma-separated targets to analyse (default onnx,intel,jetson)")
    _add_compile_flags(s)

    e = sub.add_parser("eval", help="evaluate any classifier artifact on a labelled validation set")
    e.add_argument("artifact", type=Path)
    e.add_argument("--manifest", type=Path, help="manifest.json with the preprocessing (default: beside the artifact)")
    e.add_argument("--resolution", type=int)
    e.add_argument("--crop-pct", type=float)
    e.add_argument("--interpolation", choices=choices.INTERPOLATIONS)
    e.add_argument("--mean", type=float, nargs=3)
    e.add_argument("--std", type=float, nargs=3)
    e.add_argument("--label-offset", type=int, help="outputs before class 0 (1 for 1001-way TF models; default: detect)")
    e.add_argument("--json", type=Path, help="also write the scores as JSON here")
    _add_data_flags(e)

    r = sub.add_parser("report", help="compare several output folders in one table and one HTML page")
    r.add_argument("folders", type=Path, nargs="+", help="output folders holding report.json")
    r.add_argument("--html", type=Path, default=Path("edgeeff-compare.html"), help="page to write")
    r.add_argument("--max-drop", type=float, metavar="PTS", help="highlight (and exit 4 on) drops above PTS")

    w = sub.add_parser("sweep", help="compile a matrix of models, targets and recipes as Ray tasks, with one summary")
    w.add_argument("file", type=Path, metavar="SWEEP.toml", help="the matrix (docs/sweep.md)")
    w.add_argument("--out", type=Path, help="output root (default: the file's `out`, else out/<file name>)")
    w.add_argument("--address", metavar="HOST:PORT",
                   help="join this Ray cluster (default: RAY_ADDRESS if set, else a local Ray)")
    w.add_argument("--cpus", type=int, metavar="N",
                   help="local Ray only: CPUs it may use (default: the file's `cpus`, else all of this machine's)")
    w.add_argument("--quiet", action="store_true", help="only the per-cell lines and the summary")

    sub.add_parser("variants", help="list the EfficientNet family: resolution, parameters, MACs")
    sub.add_parser("targets", help="list the device targets")
    return parser


def cmd_compile(args) -> int:
    from .pipeline import compile_targets, expand_targets

    targets = expand_targets(args.target)
    if len(targets) == 1:
        run_compile(args, targets[0])
        return 0
    done, failed = compile_targets(compile_options(args, targets[0], sensitivity=args.sensitivity), targets)
    folders = [folder for folder, _ in done if folder is not None]
    if folders:
        from .report.html_page import render

        print()
        reports = print_reports(folders)
        page = args.out / "report.html"  # the folders side by side, as `edgeeff report` draws them
        page.write_text(render(reports, max_drop=args.max_drop))
        print(f"wrote {page} ({len(folders)} targets)")
    if failed:
        print(f"edgeeff: {len(failed)} of {len(targets)} targets failed: " + "; ".join(failed), file=sys.stderr)
        gate_only = all("--max-drop" in message for message in failed)
        return AccuracyGateError.exit_code if gate_only else UserError.exit_code
    return 0


def run_compile(args, target: str | None = None) -> tuple[Path, dict]:
    """`edgeeff compile` for one target on parsed arguments: the output folder and the report
    (api.compile too)."""
    from .pipeline import compile_model

    return compile_model(compile_options(args, target or args.target, sensitivity=args.sensitivity))


def compile_options(args, target: str, **extra):
    from .pipeline import CompileOptions

    return CompileOptions(
        variant=args.variant, target=target, out=args.out, calib=args.calib, calib_count=args.calib_count,
        calib_method=args.calib_method, val=args.val, synsets=args.synsets, weights=args.weights,
        weights_format=args.weights_format, random_weights=args.random_weights, trust_pickle=args.trust_pickle,
        conventions=args.conventions, weights_key=args.weights_key, threads=args.threads,
        force=args.force, quiet=args.quiet, latency_runs=args.latency_runs, max_drop=args.max_drop,
        max_float_layers=args.max_float_layers, io=args.io, act=args.act, se=args.se, recover=args.recover,
        recover_minutes=args.recover_minutes, recover_steps=args.recover_steps, recover_params=args.recover_params,
        recover_lr=args.recover_lr,
        recover_temperature=args.recover_temperature, recover_batch=args.recover_batch,
        recover_quant_aware=args.recover_quant_aware, train=args.train,
        seed=args.seed, scale_groups=args.scale_groups, optimize=args.optimize,
        optimize_steps=args.optimize_steps, optimize_minutes=args.optimize_minutes,
        optimize_refine_steps=args.optimize_refine_steps, workers=args.workers, ray_address=args.address, **extra)


def cmd_sensitivity(args) -> int:
    from .across_targets import compare_targets

    compare_targets(args, [t.strip() for t in args.targets.split(",") if t.strip()], compile_options)
    return 0


def print_reports(folders: list[Path]) -> list[dict]:
    """Each folder's artifact table, printed (`edgeeff report`, and after a multi-target compile)."""
    from .report.contract import read_reports, table_text

    reports = read_reports(folders)
    for report in reports:
        print(f"== {report['variant']}-{report['target']} ({report['backend']})")
        print(table_text(report) + "\n")
    return reports


def cmd_report(args) -> int:
    from .pipeline import over_budget
    from .report.html_page import render

    reports = print_reports(args.folders)
    args.html.write_text(render(reports, max_drop=args.max_drop))
    print(f"wrote {args.html}")
    if args.max_drop is not None:
        failures = [f"{r['variant']}-{r['target']}/{f}" for r in reports for f in over_budget(r, args.max_drop)]
        if failures:
            raise AccuracyGateError(f"--max-drop {args.max_drop}: {'; '.join(failures)}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    return run_sweep(args.file, out=args.out, address=args.address, cpus=args.cpus, quiet=args.quiet)


def cmd_eval(args) -> int:
    run_eval(args)
    return 0


def run_eval(args) -> dict:
    """`edgeeff eval` on parsed arguments: the scores (written to --json too; api.evaluate too)."""
    from .evaluation_cli import evaluate_artifact

    result = evaluate_artifact(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cmd_variants(_args) -> int:
    from .models.builder import build_model, count_macs, count_parameters
    from .models.family import VARIANTS
    from .report.contract import format_table

    rows = [["variant", "resolution", "width", "depth", "act", "SE", "params (M)", "MACs (G)", "aliases"]]
    for name, v in VARIANTS.items():
        model = build_model(name)
        se = ("MBConv stages" if v.v2 else "yes") if v.default_se else "no"
        depth = f"{min(v.stage_depths):g}-{max(v.stage_depths):g}" if v.stage_depths else f"{v.depth:g}"
        rows.append([name, str(v.resolution), f"{v.width:g}", depth, v.default_act, se,
                     f"{count_parameters(model) / 1e6:.2f}", f"{count_macs(model) / 1e9:.2f}",
                     ", ".join(a for a in v.aliases if a.startswith(("tf_", "efficientnet_", "efficientnetv2_rw")))])
    print(format_table(rows))
    return 0


def cmd_targets(_args) -> int:
    from .profiles import all_targets
    from .report.contract import format_table

    seen, rows = set(), [["target", "aliases", "backend", "devices"]]
    for profile in all_targets().values():
        if profile.name not in seen:
            seen.add(profile.name)
            rows.append([profile.name, ", ".join(profile.aliases), profile.backend, ", ".join(profile.devices)])
    print(format_table(rows))
    return 0


COMMANDS = {"compile": cmd_compile, "sensitivity": cmd_sensitivity, "eval": cmd_eval, "report": cmd_report,
            "sweep": cmd_sweep, "variants": cmd_variants, "targets": cmd_targets}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress.QUIET = getattr(args, "quiet", False)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"edgeeff: error: {err}", file=sys.stderr)
        return err.exit_code
    except AccuracyGateError as err:
        print(f"edgeeff: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as err:
        # Python wraps an exception raised while a class body is being set up (dataclasses'
        # __set_name__, hit when Ctrl-C lands during torch.onnx's lazy imports) in a RuntimeError,
        # and some libraries wrap errors in their own types: an interrupt is an interrupt however
        # deep it sits in the chain.
        if _caused_by_interrupt(err):
            return _interrupted()
        raise


def _caused_by_interrupt(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _interrupted() -> int:
    print("edgeeff: interrupted; no output folder was written", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
