"""The machine a benchmark ran on, for the results files."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from datetime import UTC, datetime


def describe() -> str:
    """One line: CPU model, cores, memory, OS, Python, versions of the key packages, date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    import torch

    try:  # a benchmark without Ray (benchmarks/step_throughput.py) runs where it is not installed
        import ray

        ray_version = f"ray {ray.__version__}"
    except ImportError:
        ray_version = "no ray"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu or 'no GPU'}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, {ray_version}, "
        f"torch {torch.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def record(path: str, title: str, header: list[str], rows: list[list], command: str) -> None:
    """Append a Markdown table of results, with the machine and the command, to ``path``."""
    lines = [f"\n## {title}", "", f"- machine: {describe()}", f"- command: `{command}`", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write(f"# Benchmark results: {os.path.basename(path)}\n")
        f.write("\n".join(lines) + "\n")
