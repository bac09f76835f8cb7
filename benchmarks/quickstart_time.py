"""Wall time of `make quickstart` from a fresh clone (the 10-minute promise), stage by stage.

Clones this repository into a temporary directory, runs `make venv` and then `make quickstart` there,
and timestamps every "=== quickstart i/n: stage ===" line as it streams; prints and records the figures.
Run it on an otherwise idle machine: `python benchmarks/quickstart_time.py`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "quickstart_time.md"
STAGE = re.compile(r"=== quickstart \d+/\d+: (\w+) ===")


def timed(cmd: list[str], cwd: Path) -> tuple[float, list[tuple[str, float]], str]:
    """Run ``cmd``; (seconds, [(stage, start offset)], last lines of output)."""
    t0 = time.perf_counter()
    stages, tail = [], []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:
            if m := STAGE.search(line):
                stages.append((m.group(1), time.perf_counter() - t0))
                print(line.strip(), flush=True)
            tail = (tail + [line])[-40:]
        if p.wait():
            sys.exit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return time.perf_counter() - t0, stages, "".join(tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "ace-ray"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        venv_s, _, _ = timed(["make", "venv"], clone)
        total, stages, tail = timed(["make", "quickstart"], clone)
    print(tail)
    ends = [s for _, s in stages[1:]] + [total]
    rows = [[name, f"{end - start:.0f}"] for (name, start), end in zip(stages, ends, strict=True)]
    rows += [["make quickstart (all stages)", f"{total:.0f}"], ["make venv (fresh clone)", f"{venv_s:.0f}"],
             ["fresh clone to finished quickstart", f"{venv_s + total:.0f}"]]  # fmt: skip
    for name, s in rows:
        print(f"{name}: {s} s")
    if not args.no_record:
        record(str(RESULTS), "make quickstart from a fresh clone", ["stage", "seconds"], rows,
               "python benchmarks/quickstart_time.py")  # fmt: skip
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
