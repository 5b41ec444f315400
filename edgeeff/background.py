"""Work started early in a separate process, so that it overlaps the compile of another target.

Why: a command for several targets (`compile --target onnx,intel,rpi,android,jetson`) runs them one
after the other, and some of their stages use one core: the LiteRT float conversion (torch.export,
decompositions, MLIR; about 11 s for Lite0, 18 s on a loaded host) most of all. On this 2-core
machine the whole command kept the CPU only 150% busy (docs/benchmarks.md). A conversion started
at the beginning, in its own process (no GIL shared with the main one), runs while the first
targets export, calibrate and evaluate; the LiteRT target later copies the finished file.

Rules that keep the results what they would have been:
- each job is named by a content key of everything its output depends on, and its output is a
  file: whoever asks for that key gets the same bytes the work would have given in-process
  (tests/test_background.py);
- a job that fails, or was never started, is not an error here: `result()` returns None and the
  caller does the work itself (and reports the real error if there is one);
- `settle()` waits for every job before anything is timed: latency is measured with no
  background work on the cores (edgeeff/pipeline.py, time_in_turns);
- `stop_all()` ends leftovers and removes their files when the command ends, however it ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    process: subprocess.Popen
    output: Path


_jobs: dict[str, Job] = {}
_folder: Path | None = None


def workspace() -> Path:
    """A private scratch folder for the jobs' inputs and outputs (removed by stop_all)."""
    global _folder
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="edgeeff-background-"))
    return _folder


# The worker process imports the function by name, so that whatever it makes sees the function in its own
# module (a class defined inside it is named after it, and such names end up in the files).
_RUN = "import importlib, sys; m, f = sys.argv[1].split(':'); getattr(importlib.import_module(m), f)(sys.argv[2:])"


def start(key: str, function: str, args: list[str], output: Path) -> None:
    """Run `function(args)` ("package.module:name") in a background process; it must write
    `output`. Once per key; its output and errors go to workspace() / KEY.log."""
    if key in _jobs:
        return
    with open(workspace() / f"{key}.log", "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", _RUN, function, *args], stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _jobs[key] = Job(process, output)


def started(key: str) -> bool:
    return key in _jobs


def any_started() -> bool:
    return bool(_jobs)


def result(key: str) -> Path | None:
    """The finished output of the job `key` (waiting for it), or None when there was no such job or
    it failed (the caller then does the work itself)."""
    job = _jobs.get(key)
    if job is None:
        return None
    if job.process.wait() != 0 or not job.output.is_file():
        return None
    return job.output


def settle() -> None:
    """Wait until no background job runs (before timing anything)."""
    for job in _jobs.values():
        job.process.wait()


def stop_all() -> None:
    """End every job still running and remove their files."""
    global _folder
    for job in _jobs.values():
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()
    _jobs.clear()
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None
