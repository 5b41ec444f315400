"""The Python API: `edgeeff.compile(...)` and `edgeeff.evaluate(...)`, the CLI's commands as functions.

Keyword arguments are the command line's options with `_` for `-` (`calib_count=8` is
`--calib-count 8`). They are turned into that command line and parsed by the CLI's own parser, so
the API and the CLI accept the same values with the same defaults and refuse mistakes with the same
one-line messages, raised as `edgeeff.errors.UserError` instead of printed. See docs/api.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

from . import cli, progress


class Compiled(NamedTuple):
    """What `compile` returns: report.json as a dict, and the output folder it was written to."""

    report: dict
    folder: Path


def compile(variant: str, target: str, **options) -> Compiled:  # noqa: A001 (edgeeff.compile, as the CLI says it)
    """`edgeeff compile --variant VARIANT --target TARGET ...`: build, quantize and verify.

    Returns (report, folder). Raises UserError (exit code 2 on the command line) for a mistake in
    the input, MissingBackendError when the target's runtime is not installed, and
    AccuracyGateError (with `.report`) when `max_drop` is exceeded, after the folder is written.
    `quiet=True` prints nothing at all.
    """
    args = _parse("compile", [], {"variant": variant, "target": target, **options})
    with _output_silenced(args.quiet):
        folder, report = cli.run_compile(args)
    return Compiled(report, folder)


def evaluate(artifact: str | os.PathLike, **options) -> dict:
    """`edgeeff eval ARTIFACT --val DIR ...`: score any classifier artifact; returns the scores."""
    args = _parse("eval", [os.fspath(artifact)], options)
    with _output_silenced(args.quiet):
        return cli.run_eval(args)


def _parse(command: str, positional: list[str], options: dict):
    """Keyword arguments -> the command line they stand for -> the CLI's parsed arguments."""
    argv = [command, *positional]
    for name, value in options.items():
        if value is None or value is False:
            continue  # the option's default, as when the flag is left out
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):  # nargs options: mean=(0.5, 0.5, 0.5)
            argv += [flag, *map(str, value)]
        else:
            argv.append(f"{flag}={os.fspath(value) if isinstance(value, os.PathLike) else value}")
    parser = cli.build_parser(cli.RaisingParser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a Python caller's typo is a TypeError naming the keyword, as for any function
        names = [u.split("=")[0][2:].replace("-", "_") for u in unknown if u.startswith("--")] or unknown
        raise TypeError(f"edgeeff.{'evaluate' if command == 'eval' else command}() got unknown option(s) "
                        f"{', '.join(names)}; `edgeeff {command} --help` lists the options")
    return args


@contextlib.contextmanager
def _output_silenced(quiet: bool):
    """quiet=True: nothing reaches the terminal or notebook. Python's prints, warnings and logging
    are redirected, and so are file descriptors 1 and 2, because runtimes (TFLite, OpenVINO) log
    from C++ straight to them. The previous state is restored however the call ends."""
    previous_quiet = progress.QUIET
    progress.QUIET = quiet
    if not quiet:
        try:
            yield
        finally:
            progress.QUIET = previous_quiet
        return
    previous_logging = logging.root.manager.disable
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.CRITICAL)
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        _flush_c_stdio()  # what C++ buffered while silenced goes to /dev/null, not out after
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        logging.disable(previous_logging)
        progress.QUIET = previous_quiet


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to reach (unusual platforms): nothing buffered to lose
        pass
