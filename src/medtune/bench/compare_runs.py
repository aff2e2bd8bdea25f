"""Which table rows two runs of the workflow disagree on: ``python -m medtune.bench.compare_runs BASE NEW``.

Reads every ``results/tables/*.csv`` of both runs and, table by table, lines their rows up on
the columns that name a row (text columns and the data-usage, seed and severity labels) and
compares every other column exactly (NaN equals NaN). Columns of measured time
(``*seconds*``) and memory (``peak_memory*``) differ from run to run and are left out. Prints, per table, the rows only one
run has and the rows whose values differ, with the columns that do; ``--expect METHOD`` marks
the rows of a method expected to change (a row that names it in any column), and the exit
status is 1 when any other row differs or is missing from the new run. Rows and columns only the
new run has (a backbone or method added since the base) are listed and expected.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

LABELS = ("fraction", "shots", "seed", "severity")
# what a run measures of the machine rather than computes: differs from run to run
MEASURED = ("seconds", "peak_memory")


def key_columns(table: pd.DataFrame) -> list[str]:
    """The columns that name a row: text columns and the usage, seed and severity labels."""
    return [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c]) or c in LABELS]


def value_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in key_columns(table) and not any(m in c for m in MEASURED)]


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    both_missing = a.isna() & b.isna()
    return both_missing | (a == b)


def compare_table(base: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """One row per row of either table that is not in the other or whose values differ:
    its key columns, ``status`` (``only in base``, ``only in new``, ``differs``) and ``columns``."""
    # a column the new run adds (a new backbone's, a "not run" note) is listed apart by
    # added_columns; one it lost cannot be compared
    if lost := [c for c in base.columns if c not in new.columns]:
        raise ValueError(f"the new table has no column {lost[0]!r} of the base's {list(base.columns)}")
    keys = key_columns(base)
    if [c for c in key_columns(new) if c in base.columns] != keys:
        raise ValueError(f"the two tables name their rows by different columns: {keys} / {key_columns(new)}")
    new = new[list(base.columns)]
    # keys as text, an empty label (zero-shot's fraction) as ""
    as_text = lambda t: t.assign(**{k: ["" if pd.isna(v) else str(v) for v in t[k]] for k in keys})
    merged = as_text(base).merge(as_text(new), on=keys, how="outer", suffixes=("_base", "_new"), indicator=True)
    rows = []
    for _, row in merged.iterrows():
        if row["_merge"] != "both":
            rows.append({**{k: row[k] for k in keys}, "status": f"only in {'base' if row['_merge'] == 'left_only' else 'new'}", "columns": ""})
            continue
        differing = [c for c in value_columns(base) if not _same(pd.Series([row[f"{c}_base"]]), pd.Series([row[f"{c}_new"]])).iloc[0]]
        if differing:
            rows.append({**{k: row[k] for k in keys}, "status": "differs", "columns": ", ".join(differing)})
    return pd.DataFrame(rows, columns=[*keys, "status", "columns"])


def added_columns(base: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    return [c for c in new.columns if c not in base.columns]


def expected(row: pd.Series, methods: Sequence[str]) -> bool:
    """Whether a row names one of ``methods`` in any of its text columns (a comparison names both of its methods;
    a robustness table's ``method@fraction``)."""
    return any(isinstance(v, str) and any(m == v or v.startswith((f"{m}+", f"{m}@")) for m in methods) for v in row.to_numpy())


def compare_runs(base: Path, new: Path, methods: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """``{table: differing rows}`` over the tables both runs made, each row flagged ``expected``."""
    out = {}
    for path in sorted((base / "results" / "tables").glob("*.csv")):
        other = new / "results" / "tables" / path.name
        if not other.exists():
            continue
        base_table, new_table = pd.read_csv(path), pd.read_csv(other)
        found = compare_table(base_table, new_table)
        # rows the new run adds (a new backbone's, a new method's) are expected; a changed or lost one only of ``methods``
        found["expected"] = ([expected(r, methods) or r["status"] == "only in new" for _, r in found.iterrows()]
                             if len(found) else np.array([], bool))
        found.attrs["added_columns"] = added_columns(base_table, new_table)
        out[path.stem] = found
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medtune.bench.compare_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="a run's folder (its results/tables)")
    p.add_argument("new", type=Path)
    p.add_argument("--expect", nargs="*", default=[], metavar="METHOD", help="methods whose rows are expected to change")
    args = p.parse_args(argv)
    unexpected = 0
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_rows", 500):
        for table, rows in compare_runs(args.base, args.new, args.expect).items():
            if rows.attrs.get("added_columns"):
                print(f"{table}: columns only in the new run: {', '.join(rows.attrs['added_columns'])}")
            if rows.empty:
                print(f"{table}: identical")
                continue
            unexpected += int((~rows["expected"]).sum())
            print(f"{table}: {len(rows)} rows differ, {int((~rows['expected']).sum())} of them not of {args.expect}")
            print(rows.to_string(index=False))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
