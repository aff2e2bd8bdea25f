"""What a finished Snakemake run left behind: its benchmark files and its logs."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any


def read_benchmarks(root: Path):
    """One row per Snakemake benchmark file under ``root``: rule (first folder), path, and its columns."""
    import pandas as pd

    frames = []
    for path in sorted(root.rglob("*.tsv")):
        try:
            table = pd.read_csv(path, sep="\t")
        except (OSError, ValueError):
            continue
        if "s" not in table.columns or table.empty:
            continue
        row = table.iloc[[-1]].copy()  # a file repeats a job only with `repeat()`; keep the last
        rel = path.relative_to(root)
        row.insert(0, "path", str(rel))
        row.insert(0, "rule", rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        frames.append(row)
    if not frames:
        return pd.DataFrame(columns=["rule", "path", "s"])
    return pd.concat(frames, ignore_index=True)


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", re.M)
_DONE = re.compile(r"^(\d+) of (\d+) steps \((\d+)%\) done", re.M)


def parse_log(path: Path) -> dict[str, Any] | None:
    """Wall time (first to last timestamp) and step counts of one Snakemake log; None without steps."""
    text = path.read_text(errors="replace")
    stamps = [datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y") for s in _STAMP.findall(text)]
    done = _DONE.findall(text)
    if not stamps or not done:
        return None
    last_done, total, _ = (int(x) for x in done[-1])
    # a run that made the datasets ran from scratch; one that did not only re-ran what had changed
    from_scratch = re.search(r"^(local)?rule prepare_dataset:", text, re.M) is not None
    return {"log": str(path), "wall_s": (stamps[-1] - stamps[0]).total_seconds(), "steps_done": last_done, "steps": total,
            "complete": last_done == total, "from_scratch": from_scratch, "started": stamps[0].isoformat()}


def last_run_log(log_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the newest complete run, from scratch if there is one; the newest run of any kind) among Snakemake's logs."""
    runs = [r for r in (parse_log(p) for p in sorted(log_dir.glob("*.snakemake.log"))) if r is not None]
    complete = [r for r in runs if r["complete"]]
    scratch = [r for r in complete if r["from_scratch"]]
    best = scratch[-1] if scratch else (complete[-1] if complete else None)
    return best, (runs[-1] if runs else None)
