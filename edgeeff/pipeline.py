"""`edgeeff compile`: weights -> FP32 reference -> backend artifacts -> evaluation -> report.

The shared work lives here once; backends only turn (FP32 model, calibration crops, target
profile, recipe) into files and runners. The output folder is built in a hidden temporary folder
beside the destination and renamed into place at the end, so it appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import background
from .backends import backend as load_backend
from .cache import cached_array, content_key
from .choices import OPTIMIZE_SETTINGS, RECOVER_METHODS, SCALE_GROUP_SETTINGS, SE_CHOICES
from .data.images import ImageSet, load_calibration, load_validation, resolve_labels, spread_choice
from .data.preprocess import PreprocessSpec
from .errors import AccuracyGateError, UserError
from .models.builder import count_macs, count_parameters
from .models.export import export_onnx
from .models.family import spec_for_variant
from .models.weights import load_model
from .output_folder import atomic_folder, check_out_folder, kill_point
from .profiles import (
    TargetProfile,
    get_recipe,
    get_target,
    optimize_for_model,
    quantization_for_model,
    recipe_for_model,
)
from .progress import say, warn
from .report.contract import RANDOM_WEIGHTS_NOTE, artifact_row, library_versions, markdown, table_text, write_manifest
from .report.html_page import render as render_html
from .scoring import (
    PER_CLASS_LIMIT,
    TORCH_IMAGES_PER_CALL,
    TorchRunner,
    align_classes,
    latency_in_turns,
    measure_latency,
    per_class_top1,
    predict_all,
    score,
    top_score_check,
    torch_batches,
)
from .util import usable_cpus, write_json
from .version import __version__


@dataclass
class CompileOptions:
    variant: str
    target: str
    out: Path
    calib: Path | None = None
    calib_count: int = 300
    calib_method: str | None = None
    val: Path | None = None
    synsets: Path | None = None
    weights: Path | None = None
    weights_format: str = "auto"
    random_weights: bool = False
    trust_pickle: bool = False           # --weights may be unpickled (runs the file's code)
    conventions: str | None = None       # tf | pytorch; None: from the checkpoint, layout or a measurement
    weights_key: str | None = None       # the checkpoint entry to read; None: the EMA first (weights.py)
    threads: int | None = None
    force: bool = False
    quiet: bool = False
    latency_runs: int = 50
    max_drop: float | None = None
    max_float_layers: int | None = None  # fallback limit (default: 10% of the quantizable layers)
    sensitivity: bool = False            # rank every layer (report.json "sensitivity")
    io: str | None = None                # integer .tflite targets: int8 | uint8 I/O; None: the target's
    # Variants (docs/variants.md): surgery on the loaded model, then optional recovery.
    act: str | None = None            # swish | hswish | relu6; None: the model's own
    se: str | None = None             # keep | remove; None: the model's own
    recover: str = "none"             # none | distill
    recover_minutes: float | None = None  # None: RecoverySettings' 15 without recover_steps, no cap with them
    recover_steps: int | None = None
    recover_params: str | None = None  # bn | all; None: RecoverySettings' default
    recover_lr: float | None = None
    recover_temperature: float | None = None
    recover_batch: int | None = None
    recover_quant_aware: float | None = None  # fraction of the steps trained with INT8 simulated
    train: Path | None = None         # unlabelled images for recovery (default: the --calib folder)
    seed: int = 0
    scale_groups: str | None = None   # auto | off (scale_groups.py); None: the target's own setting
    optimize: str | None = None       # off | ranges | rounding (quant/optimise.py); None: the target's
    optimize_steps: int | None = None  # learning steps per block (None: optimise.DEFAULT_STEPS)
    optimize_minutes: float | None = None  # the optimisation's budget (None: optimise.DEFAULT_OPTIMIZE_MINUTES)
    # learning steps of every range at once against the FP32 logits, after the search (None:
    # optimise.DEFAULT_REFINE_STEPS; 0: off)
    optimize_refine_steps: int | None = None
    # --workers N: the per-layer evaluations of --sensitivity / --max-drop as Ray tasks (distributed.py);
    # None: in this process. ray_address: join that Ray cluster instead of starting a local one.
    workers: int | None = None
    ray_address: str | None = None


@dataclass
class Job:
    """Everything a backend's build() needs."""

    variant: str
    model: torch.nn.Module
    spec: PreprocessSpec
    target: TargetProfile
    recipe: dict
    calibration: ImageSet
    workdir: Path
    fp32_onnx: Path  # exported only when the backend's NEEDS_ONNX is true (the default)
    threads: int
    quiet: bool = False
    # --optimize rounding: the same graph with weights on their learned INT8 grid (quant/optimise.py),
    # exported for the ONNX-based backends (LiteRT converts optimised_model); the FP32 artifact stays fp32_onnx
    int8_onnx: Path | None = None
    optimisation: dict | None = None
    optimised_model: torch.nn.Module | None = None  # what int8_onnx (else fp32_onnx) was exported from
    labels: tuple[str, ...] = ()  # class names in output order (labels.txt), for files that embed them
    timings: dict = field(default_factory=dict)


class Stopwatch:
    """Wall time per stage, and the process's peak resident memory when each stage ended."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, message: str | None = None):
        kill_point(name)  # fault injection (output_folder.py); nothing unless EDGEEFF_FAULT_KILL_AT names it
        if message:
            say(message)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)
            # ru_maxrss is in KiB on Linux: a running peak, so each stage shows the high-water mark so far.
            self.peak_rss_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def over_budget(report: dict, max_drop: float) -> list[str]:
    """Artifacts whose top-1 drop exceeds --max-drop, and a fallback that missed its budget (on
    small validation sets it is judged by disagreement, which the drop can hide: a drop of
    -0.5 with 2% of images changed)."""
    failures = [f"{a['file']} drops {a['top1_drop']:.2f} points" for a in report["artifacts"]
                if a.get("top1_drop") is not None and a["top1_drop"] > max_drop]
    fb = report.get("fallback")
    if fb and not fb["met"] and fb.get("max_drop") == max_drop:
        last = fb["steps"][-1]
        value = 100 - last["top1_agreement"] if fb["metric"] == "disagreement" else last["top1_drop"]
        failures.append(f"the INT8 artifact's top-1 {fb['metric']} is still {value:.2f} points with "
                        f"{last['kept_float']} layers in float (the limit; raise --max-float-layers)")
    return failures


def check_inputs(opts: CompileOptions):
    """Every cheap check of the user's input, before any message or heavy work."""
    from .models.family import VARIANTS, nearest_names, resolve_variant

    opts.variant = resolve_variant(opts.variant)  # an alias (`tf_efficientnetv2_s`) is its variant (`v2-s`)
    if opts.variant not in VARIANTS:
        raise UserError(f"--variant {opts.variant}: unknown{nearest_names(opts.variant, VARIANTS)}; "
                        f"`edgeeff variants` lists the family")
    target = get_target(opts.target)
    recipe = get_recipe(opts.calib_method or target.calibration)
    backend = load_backend(target.backend)
    if opts.io is not None:
        io_dtypes = getattr(backend, "IO_DTYPES", ())
        if opts.io not in io_dtypes:
            raise UserError(f"--io {opts.io}: the {target.name} target's input type is fixed "
                            f"({target.input_dtype}); --io applies to the integer .tflite targets "
                            f"(rpi, android, ios)")
        target = dataclasses.replace(target, input_dtype=opts.io)
    if hasattr(backend, "check_job"):
        backend.check_job(target, recipe)
    methods = getattr(backend, "RECIPE_METHODS", None)
    if methods and recipe["method"] not in methods:
        raise UserError(f"--calib-method {recipe['name']}: the {target.name} target's quantizer does not "
                        f"implement it; choose a recipe with method {', '.join(methods)}")
    if opts.calib is not None and not opts.calib.is_dir():
        raise UserError(f"--calib {opts.calib}: not a folder; pass a folder of calibration images")
    if opts.val is not None and not opts.val.exists():
        raise UserError(f"--val {opts.val}: no such folder or list file")
    if opts.max_drop is not None and opts.val is None:
        raise UserError("--max-drop needs --val: without validation images no drop can be measured")
    if opts.max_drop is not None and opts.max_drop < 0:
        raise UserError(f"--max-drop {opts.max_drop}: must be zero or more points")
    if opts.calib_count < 1:
        raise UserError(f"--calib-count {opts.calib_count}: must be at least 1")
    check_threads(opts.threads)
    if opts.workers is not None:
        if opts.workers < 1:
            raise UserError(f"--workers {opts.workers}: must be at least 1; leave it out to rank layers in this process")
        from .distributed import require_ray

        require_ray("--workers")  # exit 3 before any heavy work, with how to install it
    if opts.weights is None and not opts.random_weights:
        from .models.weights import no_weights_message, packaged_weights_path

        if packaged_weights_path(opts.variant) is None:
            raise UserError(no_weights_message(opts.variant))
    _check_variant_options(opts)
    if opts.scale_groups is not None and opts.scale_groups not in SCALE_GROUP_SETTINGS:
        raise UserError(f"--scale-groups {opts.scale_groups}: choose {' or '.join(SCALE_GROUP_SETTINGS)}")
    if opts.optimize is not None and opts.optimize not in OPTIMIZE_SETTINGS:
        raise UserError(f"--optimize {opts.optimize}: choose {' or '.join(OPTIMIZE_SETTINGS)}")
    if opts.optimize not in (None, "off") and opts.optimize not in getattr(backend, "OPTIMIZE_MODES", ()):
        offered = getattr(backend, "OPTIMIZE_MODES", ())
        takes = " or ".join(offered) if offered else "no optimised model yet (onnx, jetson and the LiteRT targets do)"
        raise UserError(f"--optimize {opts.optimize}: the {target.name} target takes {takes}; "
                        f"or leave --optimize off")
    if opts.optimize_steps is not None and opts.optimize_steps < 1:
        raise UserError(f"--optimize-steps {opts.optimize_steps}: must be at least 1")
    if opts.optimize_refine_steps is not None and opts.optimize_refine_steps < 0:
        raise UserError(f"--optimize-refine-steps {opts.optimize_refine_steps}: must be 0 (off) or more")
    if opts.optimize == "refine" and opts.optimize_refine_steps is not None:
        from .quant.optimise import MIN_REFINE_STEPS

        if opts.optimize_refine_steps < MIN_REFINE_STEPS:
            raise UserError(f"--optimize-refine-steps {opts.optimize_refine_steps}: --optimize refine is the "
                            f"refinement alone and needs at least {MIN_REFINE_STEPS} steps (or leave the flag out)")
    if opts.optimize_minutes is not None and not opts.optimize_minutes > 0:
        raise UserError(f"--optimize-minutes {opts.optimize_minutes:g}: must be more than 0")
    check_out_folder(opts.out)
    final = opts.out / output_name(opts, target.name)
    _refuse_existing(final, opts.force)
    return target, recipe, backend, final


def calibration_warning(opts: CompileOptions, calibration: ImageSet) -> str | None:
    """Fewer calibration images than --calib-count asked for (the default 300 included): a warning,
    not an error. A small set is a legitimate choice for a quick run (edgeeff's own tests calibrate
    on 8), and a one-image folder still quantizes; but the user should know their INT8 ranges come
    from those few images, so the console and report.json say how many were used."""
    used = len(calibration)
    if used >= opts.calib_count:
        return None
    where = f"--calib {opts.calib}" if opts.calib else "scikit-image's sample photos (no --calib given)"
    unreadable = f", {len(calibration.skipped)} unreadable skipped" if calibration.skipped else ""
    return (f"--calib-count {opts.calib_count}: {where} gave only {used} image{'s' if used != 1 else ''}"
            f"{unreadable}; calibrated on {'those' if used != 1 else 'that one'}: INT8 ranges from few images "
            f"may not fit your data")


def check_threads(threads: int | None) -> None:
    # 0 is falsy: `threads or default` would quietly run with the target's count instead.
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1; leave it out for the target's own count")


def split_scales(opts: CompileOptions, target: TargetProfile, model, spec, calibration, watch,
                 shared: dict | None = None):
    """The model to export: `model` itself, or its copy with wide-ranged channels split into
    scale groups (scale_groups.py; exact in float). --scale-groups, else the target's setting for
    the model's activation (`scale_groups_by_activation`, chosen by measurement).
    `shared`: the targets of one command split the same (variant) model once."""
    quant = quantization_for_model(target, model)
    setting = opts.scale_groups or quant.get("scale_groups", "off")
    info = {"setting": setting, "sites": []}
    if setting == "off":
        return model, info
    from .quant.scale_groups import channel_widths, split_for_int8

    # Where splitting costs the target's runtime too much time: only sites at this stride or coarser.
    min_stride = int(quant.get("scale_groups_min_stride", 1))
    if min_stride > 1:
        info["min_stride"] = min_stride
    with watch.stage("scale_groups", "splitting wide-ranged channels into INT8 scale groups"):
        batches = list(torch_batches(calibration.crops, spec, TORCH_IMAGES_PER_CALL))
        # torch's thread count is in the keys: the widths are measured by a forward pass (5 s for
        # the B0 test model on 300 images), once per command whatever each target's min_stride
        threads = torch.get_num_threads()
        widths = _once(shared, f"channel widths {threads}", lambda: channel_widths(model, batches))
        deploy, sites = _once(shared, f"scale groups {threads} {min_stride}", lambda: split_for_int8(
            model, batches, min_stride=min_stride, widths=widths))
    info["sites"] = copy.deepcopy(sites)  # each report its own list
    return deploy, info


def start_background_work(opts: CompileOptions, shared: dict, model, spec, calibration) -> None:
    """At the first target of a command for several: begin, in background processes, the work of the
    later targets that needs nothing from this one (a backend's `start_background_work`: LiteRT's
    float conversion, single-threaded, about 11-18 s each for Lite0), so that it overlaps this
    target's stages instead of adding to the wall time (edgeeff/background.py)."""
    names = shared.get("targets", [])
    later = names[names.index(opts.target) + 1:] if opts.target in names else []
    for name in later:
        try:
            target = get_target(name)
            backend = load_backend(target.backend)
            if not hasattr(backend, "start_background_work"):
                continue
            backend.available()
        except UserError:  # a missing backend or unknown target is reported when its turn comes
            continue
        # that target's model to export (its scale groups, shared with it: its own compile takes them
        # from `shared`); the time is the first target's `start_background_work` stage
        deploy, _ = split_scales(dataclasses.replace(opts, target=name), target, model, spec, calibration,
                                 Stopwatch(), shared)
        try:
            say(f"started in the background for {name}: {backend.start_background_work(target, deploy, spec)}")
        except Exception as err:  # noqa: BLE001 (optional work: the target does it itself in its turn)
            say(f"note: nothing started in the background for {name} ({type(err).__name__}: {err}); "
                f"it does all its work in its turn")


def optimise_int8(opts: CompileOptions, target: TargetProfile, backend, deploy, spec, calibration, recipe: dict,
                  workdir: Path, watch, shared: dict | None = None):
    """--optimize (quant/optimise.py), against the FP32 model: `ranges` searches each activation
    range unit by unit (then refines them all at once for the target's `optimize_refine_steps`);
    `refine` only refines them all at once against the logits, from the recipe's ranges; `rounding`
    also learns each weight's rounding and exports the graph again with its weights on their
    learned INT8 grid. Returns (that ONNX or None, what was done, the
    model the quantized graph comes from); (None, None, deploy) when off.
    Targets of one command that simulate the same arithmetic on the same model and images (`rpi`,
    `android`, `ios`) share one search: `shared` holds it, each target gets its own copy."""
    mode = opts.optimize or optimize_for_model(target, deploy)
    if mode == "off":
        if opts.optimize_refine_steps:
            warn(f"--optimize-refine-steps {opts.optimize_refine_steps}: ignored, the optimisation is off for "
                 f"this model and target (add --optimize ranges)")
        return None, None, deploy
    from .quant.calibration import OWN_METHODS
    from .quant.optimise import (
        DEFAULT_OPTIMIZE_MINUTES,
        DEFAULT_REFINE_STEPS,
        MIN_REFINE_STEPS,
        REFINE_ONLY_STEPS,
        OptimiseSettings,
        optimise_int8_model,
        plan_for_budget,
    )
    from .quant.simulation import activation_ranges

    steps = 0 if mode in ("ranges", "refine") else opts.optimize_steps
    # how the runtime quantizes (TensorRT: symmetric, its centred inputs asymmetric)
    simulation = backend.simulation(target, deploy) if hasattr(backend, "simulation") else getattr(backend, "SIMULATION", {})
    # the refinement's default is the target's (`optimize_refine_steps`, by activation: measured)
    refine = opts.optimize_refine_steps if opts.optimize_refine_steps is not None else int(
        quantization_for_model(target, deploy).get("optimize_refine_steps", DEFAULT_REFINE_STEPS))
    if mode == "refine" and not refine:  # the refinement is all it does (check_inputs refused 0)
        refine = REFINE_ONLY_STEPS
    settings = OptimiseSettings(seed=opts.seed, refine_steps=refine, search_ranges=mode != "refine", **simulation,
                                **({"steps": steps} if steps is not None else {}))
    # --optimize-minutes becomes a plan (images, steps) by a cost model, never by the clock: reproducible
    minutes = opts.optimize_minutes or DEFAULT_OPTIMIZE_MINUTES
    settings, budget = plan_for_budget(deploy, spec.resolution, settings, minutes)
    if budget["cut"]:
        cuts = {"refine_steps": f"{settings.refine_steps} refinement steps",
                "search_images": f"{settings.search_images} images per range tried",
                "steps": f"{settings.steps} steps per unit", "images": f"{settings.images} images",
                "units": f"the first {budget['units']} of {budget['of_units']} units"}
        say(f"--optimize-minutes {minutes:g}: planned {budget['estimated_minutes']:g} min with "
            + ", ".join(cuts[k] for k in budget["cut"]) + " (raise --optimize-minutes for more)")
    if budget["units"] == 0:
        warn(f"--optimize-minutes {minutes:g}: too short for even the first unit of this model at the "
             f"smallest plan; INT8 uses the recipe's ranges, as with --optimize off (raise --optimize-minutes)")
        return None, None, deploy
    if mode == "refine" and not settings.refine_steps:  # the refinement is all this mode does
        warn(f"--optimize-minutes {minutes:g}: too short for {MIN_REFINE_STEPS} refinement steps (the "
             f"fewest that help); INT8 uses the recipe's ranges, as with --optimize off "
             f"(raise --optimize-minutes or use --optimize ranges)")
        return None, None, deploy
    chosen = np.unique(np.linspace(0, len(calibration.crops) - 1, min(settings.images, len(calibration.crops)))
                       .round().astype(int))  # evenly spread over the calibration set, deterministic
    batches = list(torch_batches(calibration.crops[chosen], spec, settings.batch))
    what = "activation ranges" + (f" and weight rounding ({settings.steps} steps per block)" if settings.steps else "")
    with watch.stage("optimise", f"optimising INT8 {what}"):
        # Where the target's recipe is its quantizer's own (LiteRT's sample_percentile), the search
        # starts from edgeeff's percentile ranges, the closest of its own recipes.
        start = recipe if recipe["method"] in OWN_METHODS else get_recipe("percentile")

        def search():
            ranges = activation_ranges(deploy, batches, start, symmetric=settings.symmetric,
                                       asymmetric_points=settings.asymmetric_points)
            # the refinement learns on every calibration image, not only the optimisation images
            refine_images = torch.cat(list(torch_batches(calibration.crops, spec, 50))) if settings.refine_steps else None
            return optimise_int8_model(deploy, torch.cat(batches), ranges, settings, opts.quiet,
                                       refine_images=refine_images)

        if shared is None:
            model, info = search()
        else:  # each target gets its own copy of the one search
            key = content_key(mode, repr(settings), repr(spec), start, deploy.describe(), deploy.state_dict_digest(),
                              calibration.crops[chosen], calibration.crops if settings.refine_steps else None)
            model, info = copy.deepcopy(_once(shared, f"optimise {key}", search))
        info["setting"], info["starting_ranges"], info["budget"] = mode, start["name"], budget
        if mode in ("ranges", "refine"):  # weights stay the model's own: the quantizer rounds them to nearest
            return None, info, deploy
        if not getattr(backend, "NEEDS_ONNX", True):  # LiteRT converts the optimised model itself
            return None, info, model
        path = workdir / ".export_int8.onnx"
        export_onnx(model, spec.resolution, path)
    return path, info, model


def _refuse_existing(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():  # --force would not replace a file: it is not ours
        raise UserError(f"--out: {folder} is a file, not an output folder; move it or choose another --out")
    if folder.exists() and not force:
        raise UserError(f"--out: {folder} already exists; pass --force to replace it or choose another --out")


def _check_variant_options(opts: CompileOptions) -> None:
    from .models.family import ACTIVATIONS

    if opts.act is not None and opts.act not in ACTIVATIONS:
        raise UserError(f"--act {opts.act}: choose one of {', '.join(ACTIVATIONS)}")
    if opts.se is not None and opts.se not in SE_CHOICES:
        raise UserError(f"--se {opts.se}: choose {' or '.join(SE_CHOICES)}")
    if opts.recover not in RECOVER_METHODS:
        raise UserError(f"--recover {opts.recover}: choose {' or '.join(RECOVER_METHODS)}")
    if opts.recover == "distill":
        if opts.random_weights:
            raise UserError("--recover distill needs real weights: a random teacher teaches nothing")
        if opts.train is None and opts.calib is None:
            raise UserError("--recover distill needs unlabelled images: pass --train DIR (or --calib DIR, "
                            "which is then used for both)")
        if opts.train is not None and not opts.train.is_dir():
            raise UserError(f"--train {opts.train}: not a folder; pass a folder of unlabelled images")
        recovery_settings(opts)  # its values, checked by RecoverySettings itself
        if opts.val is not None and opts.train is not None and opts.train.resolve() == opts.val.resolve():
            raise UserError("--train is the --val folder: training on the validation images would "
                            "make every accuracy figure meaningless")
    elif opts.train is not None or opts.recover_steps is not None or opts.recover_params is not None \
            or opts.recover_quant_aware is not None:
        raise UserError("--train, --recover-steps, --recover-params and --recover-quant-aware only apply with "
                        "--recover distill")


# RecoverySettings' fields, and the flag each comes from (CompileOptions names it the same way:
# --recover-quant-aware is opts.recover_quant_aware).
RECOVERY_FLAGS = {"steps": "--recover-steps", "minutes": "--recover-minutes", "lr": "--recover-lr",
                  "temperature": "--recover-temperature", "batch": "--recover-batch", "train": "--recover-params",
                  "quant_aware": "--recover-quant-aware"}


def recovery_settings(opts: CompileOptions):
    """The RecoverySettings the --recover-* flags ask for; a bad value is a one-line UserError
    naming its flag."""
    from .models.distill import BadRecoverySetting, RecoverySettings

    given = {field_name: getattr(opts, flag[2:].replace("-", "_")) for field_name, flag in RECOVERY_FLAGS.items()}
    # An option left unset (None) takes RecoverySettings' default, except the two that plan the
    # run: steps given and minutes not => no time budget (a default budget the user never asked
    # for must not cut the steps they did ask for: 620 stopped at 408); neither => the default budget.
    if given["steps"] is None and given["minutes"] is None:
        given["minutes"] = RecoverySettings.minutes
    kwargs = {key: value for key, value in given.items() if value is not None or key in ("steps", "minutes")}
    try:
        return RecoverySettings(seed=opts.seed, **kwargs)
    except BadRecoverySetting as bad:
        shown = "" if bad.value is None else f" {bad.value:g}" if isinstance(bad.value, float) else f" {bad.value}"
        raise UserError(f"{RECOVERY_FLAGS[bad.field_name]}{shown}: {bad.problem}") from None


def output_name(opts: CompileOptions, target: str, loaded: dict | None = None) -> str:
    """<variant>[-<act>][-nose][-kd]-<target>: the architecture differs from the variant's own, and
    -kd when this command recovered it by distillation (e.g. b0-hswish-nose-kd-onnx).

    The architecture is the one exported: the flags', else that of the loaded weights (`loaded`:
    the model's describe()). A recovered.pth records hard-swish and no SE, so compiling it for
    another target without flags lands in b0-hswish-nose-<target>, not over the original's b0-<target>."""
    from .models.family import VARIANTS

    v = VARIANTS[opts.variant]
    loaded = loaded or {}
    act = opts.act or loaded.get("act") or v.default_act
    se = opts.se or loaded.get("se") or ("keep" if v.default_se else "remove")
    parts = [opts.variant]
    if act != v.default_act:
        parts.append(act)
    if se == "remove" and v.default_se:
        parts.append("nose")
    if opts.recover == "distill":
        parts.append("kd")
    return "-".join(parts + [target])


def _variant_stage(stage: str, model, scores, ref_scores) -> dict:
    d = model.describe()
    entry = {"stage": stage, "act": d["act"], "se": d["se"]}
    if scores is None:
        entry.update({"top1": None, "top5": None, "top1_agreement": None})
    else:
        entry.update(scores.as_dict())
        if stage == "original":
            entry["top1_agreement"] = 100.0
        entry["top1_drop"] = round(ref_scores.top1 - scores.top1, 2)
    return entry


def make_variant_model(opts: CompileOptions, original, spec, calibration, watch):
    """Surgery (and recovery) on a copy of the original. Returns (variant, unrecovered copy or None, info)."""
    import copy

    from .models.distill import distill
    from .models.surgery import make_variant, needs_surgery

    info: dict = {}
    if not needs_surgery(original, opts.act, opts.se) and opts.recover == "none":
        return original, None, info
    variant = copy.deepcopy(original)
    with watch.stage("surgery", f"surgery: act {original.act_name} -> {opts.act or original.act_name}, "
                                f"SE {'removed' if opts.se == 'remove' and original.se_enabled else 'unchanged'}"):
        record = make_variant(variant, opts.act, opts.se, calibration.crops, spec)
    info["surgery"] = {**record.summary(), "blocks": record.se_blocks}
    before = copy.deepcopy(variant) if opts.recover == "distill" else None
    if opts.recover == "distill":
        folder = opts.train or opts.calib
        with watch.stage("load_train_images"):
            train = load_calibration(folder, 10 ** 9, spec, opts.quiet)  # every image in the folder
        settings = recovery_settings(opts)
        budget = (f"{settings.steps} steps" if settings.steps else "") + (
            f"{', at most ' if settings.steps else ''}{settings.minutes:g} min" if settings.minutes else "")
        with watch.stage("recover", f"recovering by distillation from the original on {len(train)} "
                                    f"images of {folder} ({budget})"):
            result = distill(variant, original, train.crops, spec, settings, opts.quiet)
        info["recovery"] = {"method": "distill", "images": len(train), "path": str(folder),
                            "settings": settings.to_dict(), **result.to_dict(), "file": "recovered.pth"}
        if result.planned_from_time and not result.stopped_by_time:  # a cut-short schedule has no step count
            info["recovery"]["reproduce"] = f"--recover-steps {result.steps_planned}"
    return variant, before, info


def count_layers(model: torch.nn.Module) -> int:
    """Quantizable layers (convolutions and the classifier): the same count find_layers gives on
    the exported ONNX, for backends that never see an ONNX."""
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def mixed_precision(backend, workdir: Path, artifacts: list, threads: int, opts: CompileOptions,
                    calibration: ImageSet, validation: ImageSet, ref_scores, watch) -> dict:
    """Per-layer sensitivity (--sensitivity) and the --max-drop fallback for one target.

    The fallback evaluates the all-INT8 artifact first and only ranks layers when it is over
    budget. It then keeps the most sensitive layers in float, one more per step, each step run
    in the target's runtime on the validation images, until the budget is met or the limit is
    reached; the artifact file is rewritten with the best step's layers in float.
    """
    from .quant.sensitivity import DEFAULT_IMAGES, fallback, float_limit, rank_layers

    evaluate = None
    if opts.workers is not None:
        from .distributed import RayLayerMap

        evaluate = RayLayerMap(opts.workers, opts.ray_address)
    with watch.stage("float_variants", "preparing the per-layer float variants"):
        variants = backend.float_variants(workdir, artifacts, threads)
    info: dict = {"quantizable_layers": len(variants.layers), "kept_float": []}
    calib_crops = calibration.crops[:: max(1, len(calibration) // DEFAULT_IMAGES)][:DEFAULT_IMAGES]
    sensitivity = None
    if opts.sensitivity:
        with watch.stage("sensitivity", "per-layer sensitivity"):
            sensitivity = rank_layers(variants, variants.layers, calib_crops, validation.crops,
                                      ref_scores.top1_classes, quiet=opts.quiet, evaluate=evaluate)
        info["sensitivity"] = sensitivity.as_dict()
    if opts.max_drop is None:
        return info
    limit = float_limit(len(variants.layers), opts.max_float_layers)

    def rank() -> list[str]:  # only when the all-INT8 artifact misses the budget
        if sensitivity is not None:
            return sensitivity.order()
        return rank_layers(variants, variants.layers, calib_crops, quiet=opts.quiet, checked=0,
                           evaluate=evaluate).order()

    int8 = next(a for a in artifacts if a.file == variants.int8_path.name)
    all_int8 = {"size_bytes": int8.size_bytes(workdir)}  # before the fallback rewrites the file
    with watch.stage("fallback", f"--max-drop {opts.max_drop}: evaluating, keeping sensitive layers in float if needed"):
        steps, met, metric = fallback(variants, rank, validation.crops, validation.labels, ref_scores,
                                      opts.max_drop, limit, quiet=opts.quiet)
        # Over budget at the limit: ship the step that came closest (fewest float layers on a tie).
        best = steps[-1] if met else max(steps, key=lambda s: (s.top1_agreement, -len(s.kept_float)))
        if best.kept_float:
            all_int8["latency_ms"] = measure_latency(variants.runner([]), calibration.crops[0], threads,
                                                     runs=opts.latency_runs)["median"]
            variants.save(best.kept_float)
    info["kept_float"] = best.kept_float
    if hasattr(variants, "layer_precision"):  # read back from the file as shipped (LiteRT: int8 | a16w8)
        info["layer_precision"] = variants.layer_precision()
    info["fallback"] = {"max_drop": opts.max_drop, "metric": metric, "limit": limit, "met": met,
                        "kept_float": best.kept_float, "steps": [s.as_dict() for s in steps],
                        "kept_precision": getattr(variants, "kept_precision", "float"),
                        "order": "most sensitive first (logits SQNR with the layer quantized alone)",
                        "all_int8": all_int8}
    return info


CHANGED_FILES_LISTED = 200


def changed_images(top1: np.ndarray, reference_top1: np.ndarray, validation: ImageSet,
                   names: list[str] | None = None) -> dict:
    """The validation images whose top-1 differs from the FP32 reference's: how many, their
    indices in the validation order (all: agreement on any subset, e.g. the halves a default is
    checked on, follows from them) and the first CHANGED_FILES_LISTED files, to look at, with the
    class names the reference and the artifact gave each (`reference_top1`, `top1`)."""
    indices = np.flatnonzero(top1 != reference_top1)
    listed = indices[:CHANGED_FILES_LISTED]
    out = {"count": int(len(indices)), "indices": [int(i) for i in indices],
           "files": [str(validation.paths[i]) for i in listed]}
    if names is not None:
        out["reference_top1"] = [names[int(reference_top1[i])] for i in listed]
        out["top1"] = [names[int(top1[i])] for i in listed]
    return out


def time_in_turns(rows: list[dict], artifacts: list, runners: dict, crop: np.ndarray, threads: int, runs: int,
                  watch) -> None:
    """Every runnable artifact of the target timed in turns with the others (one runtime per target),
    so `ratio_to_fp32` compares files under the same load. A proxy (the TensorRT-bound QDQ model run
    in ONNX Runtime) says so and gets no ratio: its latency is not the device's."""
    if not runners:
        return
    fp32 = next((a.file for a in artifacts if a.precision == "fp32" and a.file in runners), None)
    background.settle()  # nothing of a later target's runs while these files are timed
    with watch.stage("latency", f"timing {len(runners)} files in turns ({threads} threads, batch 1)"):
        measured = latency_in_turns(runners, crop, threads, runs=runs, reference=fp32)
    proxies = {a.file for a in artifacts if a.verified_by}
    for i, row in enumerate(rows):
        if row["file"] in measured:
            latency = measured[row["file"]]
            if row["file"] in proxies:
                latency.pop("ratio_to_fp32", None)
                latency["proxy"] = True
            rows[i] = artifact_row({**row, "latency_ms": latency})  # the contract's field order


def folder_preprocess(spec, artifacts) -> dict:
    """The report's and manifest's `preprocess`: what feeds this folder's files. The phone files
    normalise inside their graph (targets' `pixel_input`, litert.build): they take pixel / 255, so
    mean 0 and std 1 here, and `normalisation_in_model` keeps the model's own mean/std and the
    backend's word for how (its artifacts' `normalisation_in_graph`)."""
    d = spec.to_dict()
    fed = {(a.spec.mean, a.spec.std) for a in artifacts}
    if len(fed) == 1 and fed != {(spec.mean, spec.std)}:
        mean, std = fed.pop()
        how = next((a.extra["normalisation_in_graph"] for a in artifacts if "normalisation_in_graph" in a.extra), None)
        d.update(mean=list(mean), std=list(std),
                 normalisation_in_model={"mean": list(spec.mean), "std": list(spec.std), "how": how})
    return d


def compile_model(opts: CompileOptions, shared: dict | None = None) -> tuple[Path, dict]:
    """Compile for one target; returns the output folder and its report. `opts.quiet` silences the
    stage messages too (they follow progress.QUIET, which the CLI sets), for callers that are not
    the CLI (the benchmark scripts, edgeeff.compile). `shared`: a dict kept across the compiles of
    one model for several targets (compile_targets): what does not depend on the target (weights,
    images, the variant and its recovery, the FP32 reference's logits) is computed once in it."""
    from . import progress as progress_state

    before = progress_state.QUIET
    progress_state.QUIET = before or opts.quiet
    try:
        return _compile(opts, shared)
    finally:
        progress_state.QUIET = before


def _once(shared: dict | None, key: str, compute):
    """compute(), or its result from an earlier target of the same command (compile_targets)."""
    if shared is None:
        return compute()
    if key not in shared:
        shared[key] = compute()
    return shared[key]


def expand_targets(value: str) -> list[str]:
    """`--target`: one name, a comma-separated list, or `all` (every file in targets/); names are
    checked (one line for an unknown one) and duplicates dropped, aliases resolved."""
    from .profiles import all_targets

    if value.strip() == "all":
        return list(dict.fromkeys(p.name for p in all_targets().values()))
    names = [get_target(part.strip()).name for part in value.split(",") if part.strip()]
    if not names:
        raise UserError(f"--target {value!r}: name a target (`edgeeff targets`), a comma-separated list or all")
    return list(dict.fromkeys(names))


def compile_targets(base: CompileOptions, targets: list[str]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """One model for several targets: each target its own folder, report and manifest (written
    atomically, as a single compile writes them), the target-independent work done once. A target
    that fails is reported in one line and the others still run. Returns the compiled (folder,
    report) pairs and one message per failed target."""
    shared: dict = {"targets": list(targets)}
    done, failed = [], []
    try:
        for name in targets:
            say(f"== {name}")
            try:
                done.append(compile_model(dataclasses.replace(base, target=name), shared))
            except AccuracyGateError as err:  # the report is written; the gate fails at the end
                done.append((err.folder, err.report))
                failed.append(f"{name}: {err}")
            except UserError as err:
                warn(f"{name}: {err}")
                failed.append(f"{name}: {err}")
    finally:
        background.stop_all()
    return done, failed


def _compile(opts: CompileOptions, shared: dict | None = None) -> tuple[Path, dict]:
    watch = Stopwatch()
    target, recipe, backend, final = check_inputs(opts)
    # The profile's threads are the device's; evaluating here, never ask for more than the host has.
    threads = opts.threads or max(1, min(target.threads, usable_cpus()))
    torch.set_num_threads(threads)
    spec = spec_for_variant(opts.variant)
    # Read once per preprocessing: by the conventions' measurement if it runs, else below (and
    # again only if the weights' own preprocessing differs, torchvision's V2 files).
    calibration_sets: dict[str, ImageSet] = {}

    def calibration_images() -> ImageSet:
        key = f"calibration {spec}"
        if key not in calibration_sets:
            with watch.stage("load_images"):
                calibration_sets[key] = _once(shared, key, lambda: load_calibration(
                    opts.calib, opts.calib_count, spec, opts.quiet))
        return calibration_sets[key]

    def measurement_batch() -> torch.Tensor:
        from .models.weights import MEASURE_IMAGES

        crops = np.stack(spread_choice(list(calibration_images().crops), MEASURE_IMAGES))
        return torch.cat(list(torch_batches(crops, spec, MEASURE_IMAGES)))

    # Weights that do not fit the variant are the user's mistake: loaded before any message, so
    # the error is the only line they see (loading takes a second or two, even for B7).
    with watch.stage("load_model"):
        original, weights_info = _once(shared, "model", lambda: load_model(
            opts.variant, opts.weights, opts.weights_format, random_weights=opts.random_weights,
            trust_pickle=opts.trust_pickle, conventions=opts.conventions, images=measurement_batch,
            weights_key=opts.weights_key))
    say(f"loaded {opts.variant} weights ({weights_info.describe()})")
    say(f"conventions: {weights_info.conventions.describe()}")
    if opts.val is None:
        say("note: no --val given: artifacts are built and timed, accuracy is not measured")
    named = opts.out / output_name(opts, target.name, original.describe())
    if named != final:  # the weights carry their own architecture (e.g. a recovered.pth)
        _refuse_existing(named, opts.force)
        final = named
    labels = resolve_labels(opts.synsets)
    spec = spec_for_variant(opts.variant, weights_info.format)  # V2: torchvision's files have their own
    with watch.stage("load_images"):
        validation = _once(shared, f"validation {spec}", lambda: load_validation(
            opts.val, labels, spec, opts.quiet)) if opts.val else None
    calibration = calibration_images()
    warnings = [w for w in (calibration_warning(opts, calibration),
                            RANDOM_WEIGHTS_NOTE if weights_info.source == "random" else None) if w]
    for message in warnings:
        warn(message)
    num_classes = original.classifier.out_features
    if num_classes != len(labels.synsets):
        raise UserError(f"the model has {num_classes} classes but the label list has {len(labels.synsets)}: "
                        f"pass --synsets FILE with one line per model class")
    # The variant is what gets exported and quantized; the original stays the reference.
    # (surgery and recovery depend on the model and the images only: once for every target)
    model, unrecovered, variant_info = _once(shared, "variant", lambda: make_variant_model(
        opts, original, spec, calibration, watch))
    is_variant = model is not original
    # What is exported: the same function, possibly with scale groups (recovered.pth keeps `model`).
    deploy, scale_group_info = split_scales(opts, target, model, spec, calibration, watch, shared)
    if shared is not None and not shared.get("background work started"):
        shared["background work started"] = True
        with watch.stage("start_background_work"):
            start_background_work(opts, shared, model, spec, calibration)

    # what the folder will hold, about: the FP32 files and the INT8 ones (for the disk-full message)
    needed = 3 * 4 * count_parameters(deploy)
    with atomic_folder(final, opts.force, needed_bytes=needed) as workdir:
        fp32_onnx = workdir / ".export.onnx"
        if getattr(backend, "NEEDS_ONNX", True):  # the LiteRT backend converts the PyTorch model itself
            with watch.stage("export_onnx", "exporting FP32 ONNX"):
                if shared is None:
                    export_onnx(deploy, spec.resolution, fp32_onnx)
                else:
                    # The export is deterministic: targets of one command whose graph is the same (no
                    # scale groups, or the same ones) write the first one's bytes instead of exporting again.
                    graph_key = content_key(deploy.describe(), deploy.state_dict_digest(), spec.resolution)
                    fp32_onnx.write_bytes(_once(shared, f"fp32 onnx {graph_key}",
                                                lambda: export_onnx(deploy, spec.resolution, fp32_onnx).read_bytes()))
        # The target's default recipe, refined per activation (`calibration_by_activation` in its
        # file, chosen by measurement); a recipe the user chose with --calib-method stays as given.
        recipe = recipe_for_model(target, recipe, model)
        int8_onnx, optimisation, optimised = optimise_int8(opts, target, backend, deploy, spec, calibration,
                                                            recipe, workdir, watch, shared)
        job = Job(opts.variant, deploy, spec, target, recipe, calibration, workdir, fp32_onnx, threads, opts.quiet,
                  int8_onnx=int8_onnx, optimisation=optimisation, optimised_model=optimised,
                  labels=tuple(labels.names))
        with watch.stage("quantize", f"quantizing for {target.name} ({recipe['name']} calibration)"):
            artifacts = backend.build(job)
        fp32_onnx.unlink(missing_ok=True)
        if int8_onnx is not None:
            int8_onnx.unlink(missing_ok=True)

        if "recovery" in variant_info:
            from .models.distill import save_recovered

            save_recovered(model, workdir / "recovered.pth", {"recovered_from": weights_info.sha256})
        reference = TorchRunner(original, spec, threads)
        ref_scores = None
        reference_cached = False
        if validation is not None:
            with watch.stage("evaluate_reference", "evaluating FP32 reference (PyTorch)"):
                # Cached by content: a second target for the same model and images reuses it.
                key = content_key(weights_info.sha256 or weights_info.source, original.describe(),
                                  original.state_dict_digest(), validation.crops, reference.runtime,
                                  reference.layout)
                earlier = shared is not None and "reference_logits" in shared  # an earlier target's
                ref_logits, hit = _once(shared, "reference_logits", lambda: cached_array(
                    "reference_logits", key, lambda: predict_all(reference, validation.crops, "FP32 reference",
                                                                 opts.quiet)))
                ref_scores = score(ref_logits, validation.labels)
                reference_cached = hit or earlier
        chain = []
        export_logits = ref_logits if validation is not None else None  # what the FP32 export must match
        if is_variant:
            chain.append(_variant_stage("original", original, ref_scores, ref_scores))
            stages = [("variant", unrecovered), ("recovered", model)] if unrecovered is not None else [("variant", model)]
            for stage, stage_model in stages:
                stage_scores = None
                if validation is not None:
                    with watch.stage(f"evaluate_{stage}", f"evaluating the {stage} model (PyTorch)"):
                        logits = predict_all(TorchRunner(stage_model, spec, threads), validation.crops,
                                             f"{stage} model", opts.quiet)
                    stage_scores = score(logits, validation.labels, ref_scores.top1_classes)
                    export_logits = logits
                chain.append(_variant_stage(stage, stage_model, stage_scores, ref_scores))
        layer_info = None
        if validation is not None and hasattr(backend, "float_variants") and (
                opts.sensitivity or opts.max_drop is not None):
            layer_info = mixed_precision(backend, workdir, artifacts, threads, opts, calibration, validation,
                                         ref_scores, watch)
        quantizable = layer_info["quantizable_layers"] if layer_info else count_layers(deploy)
        rows = []
        class_top1 = {"reference": ref_scores.top1_classes} if ref_scores is not None else {}
        timed = {}  # file -> its runner, timed in turns below
        for artifact in artifacts:
            row = {"file": artifact.file, "format": artifact.format, "precision": artifact.precision,
                   "input": {"layout": artifact.spec.layout, "dtype": artifact.spec.input_dtype},
                   "verified": artifact.verified}
            size = artifact.size_bytes(workdir)
            if size is not None:  # a device-built engine is not here: no size to report
                row["size_bytes"] = size
            if artifact.quantization:
                row["quantization"] = artifact.quantization
            if artifact.precision == "int8":
                row["quantizable_layers"] = quantizable
                row["kept_float"] = layer_info["kept_float"] if layer_info else []
                if layer_info and "layer_precision" in layer_info:
                    row["quantization"] = {**row.get("quantization", {}),
                                           "layer_precision": layer_info["layer_precision"]}
            if artifact.runnable_here:
                runner = backend.open_runner(workdir / artifact.file, threads, artifact.spec)
                row["runtime"] = runner.runtime
                if validation is not None:
                    with watch.stage(f"evaluate_{artifact.file}", f"evaluating {artifact.file} in {runner.runtime}"):
                        logits = align_classes(predict_all(runner, validation.crops, artifact.file, opts.quiet),
                                               num_classes)
                    s = score(logits, validation.labels, ref_scores.top1_classes)
                    row.update(s.as_dict())
                    if artifact.precision != "fp32":
                        row["top1_changed"] = changed_images(s.top1_classes, ref_scores.top1_classes, validation,
                                                             labels.names)
                    class_top1[artifact.file] = s.top1_classes
                    row["top_score"] = top_score_check(logits, artifact.extra.get("output"))
                    row["top1_drop"] = round(ref_scores.top1 - s.top1, 2)
                    if artifact.precision == "fp32":
                        # The export check: against the PyTorch model that was exported (the variant's own).
                        row["max_abs_diff_vs_reference"] = float(np.abs(logits - export_logits).max())
                    if is_variant:  # what quantizing the variant cost, beside the drop from the original
                        variant_top1 = export_logits.argmax(1)
                        row["top1_vs_variant"] = {
                            "drop": round(chain[-1]["top1"] - s.top1, 2),
                            "agreement": round(100 * float((logits.argmax(1) == variant_top1).mean()), 2)}
                else:
                    row.update({"top1": None, "top5": None, "top1_drop": None, "top1_agreement": None})
                timed[artifact.file] = runner
            else:
                row["reason"] = artifact.reason
            if artifact.verified_by:
                row["verified_by"] = artifact.verified_by
            row.update(artifact.extra)
            rows.append(artifact_row(row))
        time_in_turns(rows, artifacts, timed, calibration.crops[0], threads, opts.latency_runs, watch)

        report = {
            "variant": opts.variant, "target": target.name, "backend": target.backend,
            "preprocess": folder_preprocess(spec, artifacts),
            "calibration": {"source": "images" if opts.calib else "package-sample",
                            "path": str(opts.calib) if opts.calib else calibration.source,
                            "images": len(calibration), "method": recipe["method"], "recipe": recipe["name"],
                            "requested": opts.calib_count, "skipped": len(calibration.skipped)},
            "dataset": ({"path": str(opts.val), "images": len(validation),
                         "classes": int(len(np.unique(validation.labels))), "skipped": len(validation.skipped),
                         "label_source": labels.source}
                        if validation is not None else
                        {"path": None, "images": 0, "classes": 0,
                         "note": "accuracy not measured: no --val given"}),
            "reference": {"runtime": reference.runtime, "precision": "fp32", "cached": reference_cached,
                          **({"top1": round(ref_scores.top1, 2), "top5": round(ref_scores.top5, 2)}
                             if ref_scores else {"top1": None, "top5": None})},
            "artifacts": rows,
            "accuracy_measured": validation is not None,
            **({"fallback": layer_info["fallback"]} if layer_info and "fallback" in layer_info else {}),
            **({"sensitivity": layer_info["sensitivity"]} if layer_info and "sensitivity" in layer_info else {}),
            "model": {**model.describe(), "parameters": count_parameters(model),
                      "macs": count_macs(model), "num_classes": num_classes,
                      **({"surgery": variant_info["surgery"]} if "surgery" in variant_info else {}),
                      "weights": weights_info.to_dict()},
            "target_profile": target.to_report(),
            **({"variant_chain": chain} if is_variant else {}),
            **({"recovery": variant_info["recovery"]} if "recovery" in variant_info else {}),
            "scale_groups": scale_group_info,
            "edgeeff_version": __version__,
            "versions": library_versions(),
        }
        if validation is not None and len(np.unique(validation.labels)) <= PER_CLASS_LIMIT:
            report["per_class"] = {"metric": "top-1 % per validation class", "limit": PER_CLASS_LIMIT,
                                   "classes": per_class_top1(validation.labels, class_top1, labels.names)}
        if calibration.skipped or (validation and validation.skipped):
            report["skipped_images"] = calibration.skipped + (validation.skipped if validation else [])
        report["warnings"] = warnings
        report["timings_s"] = watch.timings
        report["peak_rss_mb"] = watch.peak_rss_mb
        for scratch in workdir.glob(".*"):  # the backends' scratch files (.export.onnx, .int8_source.tflite)
            if scratch.is_file():
                scratch.unlink()
        (workdir / "labels.txt").write_text("\n".join(labels.names) + "\n")
        write_json(workdir / "report.json", report)
        (workdir / "report.md").write_text(markdown(report))
        (workdir / "report.html").write_text(render_html([report], max_drop=opts.max_drop))
        write_manifest(workdir, report, "labels.txt")
    print(table_text(report))
    print(f"\nwrote {final}/ (report.json, report.md, report.html, manifest.json)")
    if opts.max_drop is not None:
        if validation is None:
            raise UserError("--max-drop needs --val: without validation images no drop was measured")
        failures = over_budget(report, opts.max_drop)
        if failures:
            raise AccuracyGateError(f"--max-drop {opts.max_drop}: {'; '.join(failures)} (report written to {final})",
                                    report, folder=final)
    return final, report
