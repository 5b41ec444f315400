"""Small helpers shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data) -> None:
    """Stable JSON (sorted keys off: the contract's field order reads better) with a newline."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads; runtimes get theirs through their session options."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity set (taskset, a container's cpuset, a test
    worker pinned to one core), not every core the host has, so a runtime never gets more threads
    than it can run and spins against itself."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextlib.contextmanager
def captured_output(quiet: bool = True):
    """Silence the converters' C++ and Python chatter (written straight to fds 1 and 2).

    On failure the captured text is replayed on stderr, so nothing useful is lost.
    """
    if not quiet:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace")[-4000:])


def interpreter_keeping_every_tensor(model_path: Path, threads: int):
    """A LiteRT interpreter of the .tflite at `model_path`, allocated, whose intermediate tensors
    stay readable after invoke(), and {tensor name: tensor index}. One helper for the three readers
    of a float file's activations: the tensor match of quant/tensor_names.py, the LiteRT backend's
    histogram ranges and its bias correction (here, below both quant/ and backends/)."""
    from ai_edge_litert.interpreter import Interpreter  # the LiteRT targets' runtime: optional

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "experimental_preserve_all_tensors ... debugging"
        it = Interpreter(model_path=str(model_path), num_threads=threads, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it, {d["name"]: d["index"] for d in it.get_tensor_details()}
