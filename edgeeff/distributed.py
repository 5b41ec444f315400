"""Ray, the one scheduler edgeeff uses beyond one process: `edgeeff sweep` and `--workers N`.

Ray is optional (the `sweep` extra): it is imported only here and only when asked for, so a
compile without `--workers` never needs it. Nothing here is a home-made pool: tasks, their CPU
declarations, the object store and cancellation are Ray's own (docs/sweep.md).

Where Ray runs:
- no address (the default): a local Ray started by this process (`ray.init(address="local",
  num_cpus=N)`), stopped again when the command ends;
- `--address HOST:PORT` or the RAY_ADDRESS variable: an existing cluster (`ray start --head` on
  one machine, `ray start --address HOST:PORT` on the others) is joined; its CPUs are its own.

Below the pipeline (tests/test_layout.py): it knows runners and layers, never a compile.
"""

from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np

from .errors import MissingBackendError, UserError

INSTALL_HINT = "pip install 'edgeeff[sweep]' (or pip install ray)"


def require_ray(why: str):
    """The ray module, or exit 3 with how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingBackendError(f"{why} runs on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def cluster_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS, else None (a local Ray of our own)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(why: str, num_cpus: int, address: str | None = None, quiet: bool = False):
    """Ray for the block: joined if an address is given, else started locally with `num_cpus`
    and shut down at the end. Inside a Ray task (a sweep's cell) the running Ray is used as it is.
    `quiet`: Ray's own start-up lines too are left out (warnings stay)."""
    import logging

    ray = require_ray(why)
    if ray.is_initialized():
        yield ray
        return
    if num_cpus < 1:
        raise UserError(f"--workers {num_cpus}: must be at least 1")
    address = cluster_address(address)
    # log_to_driver off: the tasks' own output (a compile's tables) would interleave on this
    # terminal; the driver prints one line per finished task instead.
    level = logging.WARNING if quiet else logging.INFO
    try:
        if address:
            # A cluster's CPUs are declared by its nodes (`ray start --num-cpus`); num_cpus here
            # would be refused by Ray when connecting.
            ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=level)
        else:
            # "local": a fresh Ray of our own even if a `ray start` cluster runs on this machine
            # (ray.init() alone would join that one).
            ray.init(address="local", num_cpus=num_cpus, log_to_driver=False, include_dashboard=False,
                     logging_level=level)
    except ConnectionError as err:
        raise UserError(f"--address {address}: cannot join that Ray cluster ({err}); start it with "
                        f"`ray start --head` or leave --address and RAY_ADDRESS unset for a local Ray") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _logits_of(variants, float_sets: list[list[str]], inputs: np.ndarray) -> list[np.ndarray]:
    """The artifact's logits with each set of layers in float: the work of one task."""
    from .quant.sensitivity import run_batches

    return [run_batches(variants.runner(kept), inputs) for kept in float_sets]


LAYERS_PER_TASK = 3


class RayLayerMap:
    """`rank_layers(..., evaluate=RayLayerMap(workers))`: the per-layer evaluations of the
    sensitivity ranking as Ray tasks, `workers` at a time (one CPU each).

    The float-variants object (the INT8 model and its float twin) and the input images go into
    the object store once; each task gets a contiguous chunk of a few layers and returns their logits.
    The logits, hence the SQNRs and the ranking, are those of the serial loop: the same runner
    on the same inputs, with one runtime thread per task instead of the compile's threads (ONNX
    Runtime's and OpenVINO's CPU kernels split work across threads without changing sums; checked
    by tests/test_sweep.py, which compares every SQNR with the serial run's)."""

    def __init__(self, workers: int, address: str | None = None):
        self.workers, self.address = workers, address

    def __call__(self, variants, float_sets: list[list[str]], inputs: np.ndarray, say=None) -> list[np.ndarray] | None:
        try:
            payload = pickle.dumps(variants)
        except (TypeError, pickle.PicklingError, AttributeError) as err:
            # This backend's variants live in its runtime's memory (OpenVINO's ov.Model): not
            # sendable to another process, so the caller ranks them here, as without --workers.
            from .progress import warn

            warn(f"--workers: the {variants.backend} layer variants cannot be sent to Ray workers "
                 f"({type(err).__name__}); ranking the layers in this process")
            return None
        with ray_session("--workers", self.workers, self.address) as ray:
            one_thread = pickle.loads(payload)
            one_thread.threads = 1  # one CPU per task, as declared below
            variants_ref, inputs_ref = ray.put(one_thread), ray.put(inputs)
            task = ray.remote(num_cpus=1, max_retries=0)(_logits_of)
            # Small chunks (LAYERS_PER_TASK), handed out as workers free up: a task's start costs
            # little (the B0 test model's variants unpickle in 0.05 s), while one worker running
            # slower than the other is common on a shared host. Measured (B0 onnx, 82 layers, 2
            # workers, 2 CPUs): 6 chunks 68.0 s (one worker idle for the last 13 s), 28 chunks
            # 53.8 s; the serial loop with 2 runtime threads 72.7 s.
            chunks = np.array_split(np.arange(len(float_sets)), max(1, -(-len(float_sets) // LAYERS_PER_TASK)))
            refs = [task.remote(variants_ref, [float_sets[i] for i in chunk], inputs_ref)
                    for chunk in chunks if len(chunk)]
            if say is not None:
                say(f"sensitivity: {len(float_sets)} layer evaluations as {len(refs)} Ray tasks, "
                    f"{self.workers} at a time")
            try:
                results = ray.get(refs)
            except KeyboardInterrupt:
                for ref in refs:
                    ray.cancel(ref)
                raise
        return [logits for chunk in results for logits in chunk]
