"""The one wrapper every workflow script runs its work through.

It sends the job's output to its Snakemake log, sets the thread count Snakemake
granted, and turns the errors medtune raises on bad input into one line naming
the culprit (on stderr and in the log) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


def run(main: Callable[[object], None], smk) -> None:
    log_path = smk.log[0] if len(smk.log) else None
    threads = max(1, int(getattr(smk, "threads", 1) or 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    with contextlib.ExitStack() as stack:
        if log_path:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            log = stack.enter_context(open(log_path, "w", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            import torch

            torch.set_num_threads(threads)
            main(smk)
        except KNOWN_ERRORS as err:
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            import traceback

            traceback.print_exc()
            print(f"medtune error: {message}", file=sys.__stderr__)
            print(f"medtune error: {message}")
            raise SystemExit(1) from None
