"""Running Snakemake from the bench and reading what ``snakemake -n`` prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from medtune.io import write_text


def snakemake_cmd(repo: Path, *args: str) -> list[str]:
    """``snakemake -s REPO/Snakefile ARGS`` with this interpreter (its virtualenv's snakemake)."""
    return [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), *args]


def job_count(output: str) -> int | None:
    """Total jobs from the 'Job stats' table of ``snakemake -n``; 0 when there is nothing to be done."""
    m = re.search(r"^total\s+(\d+)\s*$", output, re.M)
    if m:
        return int(m.group(1))
    return 0 if "Nothing to be done" in output else None


def dry_run_reasons(output: str) -> dict[str, str]:
    """The 'Reasons:' block of ``snakemake -n``: why jobs would run -> which rules."""
    block = output.split("\nReasons:", 1)[1] if "\nReasons:" in output else ""
    reasons, current = {}, None
    for line in block.splitlines():
        text = line.strip()
        if not text or text.startswith("(check"):
            continue
        if not line.startswith("    ") or text.startswith(("This was a dry-run", "Some jobs")):
            break
        if line.startswith("        ") and current:
            reasons[current] = text
        elif text.endswith(":"):
            current = text[:-1]
    return reasons


def timed(cmd: list[str], cwd: Path | None = None, log_path: Path | None = None) -> tuple[float, int, str]:
    """(seconds, exit status, stdout + stderr) of ``cmd``, interpreter start included; the output also to ``log_path``."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if log_path is not None:
        write_text(out, log_path)
    return seconds, proc.returncode, out
