"""What the benchmark scripts share: result rows, generated doc sections, their arguments, the machine."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def report_row(scores, reference_top1: float, /, **fields) -> dict:
    """One result row as every benchmark writes it: `fields` first (model, backend, method...), then
    the contract's accuracy fields from an evaluate.Scores, rounded to 2 decimals, 0-100, drop =
    reference minus artifact. Values passed in `fields` for those keys win (the caller knows better)."""
    row = dict(fields)
    accuracy = {"top1": round(scores.top1, 2), "top5": round(scores.top5, 2),
                "top1_drop": round(reference_top1 - scores.top1, 2)}
    if scores.top1_agreement is not None:
        accuracy["top1_agreement"] = round(scores.top1_agreement, 2)
    for key, value in accuracy.items():
        row.setdefault(key, value)
    return row


def replace_section(text: str, key: str, block: str) -> str:
    """`text` with the part between `<!-- begin:KEY -->` and `<!-- end:KEY -->` replaced by `block`
    (markers kept), or the block appended with its markers: how scripts regenerate doc tables."""
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    block = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text[text.index(begin):]:
        start = text.index(begin)
        return text[:start] + block + text[text.index(end, start) + len(end):]
    return text.rstrip() + "\n\n" + block + "\n"


def add_model_and_data_arguments(parser) -> None:
    """The benchmark scripts' arguments for the model and its images: --variant (default lite0),
    --weights, --calib and --val (required), --calib-count (default 300)."""
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--calib-count", type=int, default=300)


def machine_info() -> dict:
    """What a benchmark figure depends on: CPU model, cores, the SIMD flags the INT8 kernels use, load."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        present = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
        flags = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                             "amx_int8", "amx_bf16") if f in present]
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(), "simd": flags,
            "python": platform.python_version(), "load_average": [round(x, 2) for x in load if x is not None]}


def machine_line(machine: dict) -> str:
    """One sentence for a doc: `2 x AMD EPYC (x86_64; avx2, avx512_vnni), load average 0.3/0.9/1.8`."""
    load = "/".join(f"{x:.1f}" for x in machine.get("load_average", []))
    return (f"{machine['cpus']} x {machine['cpu']} ({machine['machine']}; {', '.join(machine['simd']) or 'no AVX'}), "
            f"Python {machine['python']}, 1/5/15-minute load average {load}")


def python_info() -> str:
    return f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()} ({sys.platform})"
