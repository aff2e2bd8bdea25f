"""The one wrapper every workflow script runs its work through.

It sends the job's output to its Snakemake log, sets the thread count Snakemake
granted, and turns the errors medtune raises on bad input into one line naming
the culprit (on stderr and in the log) instead of a traceback. When the work ends,
it logs one line (:data:`USAGE_PREFIX`) of what the job used, as the kernel counts it: wall and CPU
seconds since the process started, and the peak resident memory. Snakemake's
benchmark files sample memory every 30 s once a job has run for 30 s, so they can
miss a short peak; this line cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from typing import Any, Callable

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)
USAGE_PREFIX = "medtune usage: "


def run(main: Callable[[object], None], smk) -> None:
    log_path = smk.log[0] if len(smk.log) else None
    if "medtune.memory" in sys.modules:  # an estimate stated by an earlier job of this process is not this job's
        sys.modules["medtune.memory"].forget()
    threads = max(1, int(getattr(smk, "threads", 1) or 1))
    # torch sizes its thread pool from this when it is first imported; light jobs
    # (subsets, tables, figures) never import it and should not pay for it
    os.environ["OMP_NUM_THREADS"] = str(threads)
    with contextlib.ExitStack() as stack:
        if log_path:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            log = stack.enter_context(open(log_path, "w", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            gpus = int(getattr(smk, "resources", {}).get("gpu", 0) or 0)
            pinned = str(getattr(getattr(smk, "params", None), "device", "")).startswith("cuda:")
            if gpus and not pinned:  # device: cuda:N means the user chose the device
                from medtune.devices import acquire_gpu

                # before torch initialises CUDA: the job then sees only its own device(s)
                device = stack.enter_context(acquire_gpu(count=gpus))
                if device is not None:
                    print(f"medtune: GPU job on device {device}")
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(threads)
            with _usage_line():
                main(smk)
        except KNOWN_ERRORS as err:
            message = oom_message(smk) if _is_out_of_memory(err) else f"{type(err).__name__}: {err}".splitlines()[0]
            import traceback

            traceback.print_exc()
            print(f"medtune error: {message}", file=sys.__stderr__)
            print(f"medtune error: {message}")
            raise SystemExit(1) from None


def report(message: str) -> None:
    """One plain progress line in the job's log (``medtune: ...``), flushed at once: a reader
    (a user's ``tail -f``, a test waiting for a stage) sees how far the job got."""
    print(f"medtune: {message}", flush=True)


@contextlib.contextmanager
def _usage_line():
    try:
        yield
    finally:
        print(USAGE_PREFIX + json.dumps(usage()), flush=True)


def usage() -> dict[str, Any]:
    """This process's wall seconds since it started, CPU seconds and peak RSS (MB), its
    children's included (the CPU time of those waited for, the largest child's peak)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    age = _process_age()
    return {
        "wall_s": None if age is None else round(age, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(me.ru_maxrss / 1024, 1),  # kB on Linux
        "children_peak_rss_mb": round(children.ru_maxrss / 1024, 1),
    }


def _process_age() -> float | None:
    """Seconds since this process started (interpreter start and imports included)."""
    try:
        import psutil  # a dependency of Snakemake's
    except ImportError:
        return None
    return time.time() - psutil.Process().create_time()


def read_usage(log_path) -> dict[str, Any] | None:
    """The usage line a job wrote last in its log (see :func:`usage`); None when there is none."""
    found = None
    with contextlib.suppress(OSError), open(log_path, errors="replace") as fh:
        for line in fh:
            if line.startswith(USAGE_PREFIX):
                found = line
    return json.loads(found[len(USAGE_PREFIX):]) if found else None


def _is_out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")  # not imported: not a CUDA out-of-memory error
    return torch is not None and isinstance(err, torch.cuda.OutOfMemoryError)


def oom_message(smk) -> str:
    """Out of GPU memory: name the setting the user can change, where it is set, and its value now."""
    params = getattr(smk, "params", None)
    method = getattr(params, "method", None) or {}
    hyper, name = method.get("params", {}), method.get("name", "<method>")
    spec = getattr(params, "spec", None) or {}
    rule = getattr(smk, "rule", "job")
    backbone = getattr(getattr(smk, "wildcards", None), "backbone", None) or "<name>"
    # the estimate the job stated at its start (medtune.memory) gives a batch size that fits this GPU
    memory = sys.modules.get("medtune.memory")
    advice = memory.out_of_memory_advice() if memory is not None else None
    return _oom_setting(rule, name, hyper, spec, backbone) + (f": {advice}" if advice else "")


def _oom_setting(rule: str, name: str, hyper: dict, spec: dict, backbone: str) -> str:
    if "grad_accum" in hyper and "batch_size" in hyper:
        # grad_accum splits each contrastive batch into micro-batches with the batch's
        # exact loss and gradients (medtune.contrastive), so raising it is a true remedy
        size, accum = hyper["batch_size"], hyper.get("grad_accum", 1)
        micro = -(-size // accum)
        return (
            f"out of GPU memory in rule {rule} at batch size {size} (micro-batches of {micro}); "
            f"lower methods.{name}.batch_size (now {size}) or raise methods.{name}.grad_accum (now {accum}), "
            f"which splits each batch into micro-batches of batch_size/grad_accum with the same loss and gradients"
        )
    if "batch_size" in hyper:
        where, size = f"methods.{name}.batch_size (now {hyper['batch_size']})", hyper["batch_size"]
    elif "batch_size" in spec.get("pretrain", {}):
        where, size = f"backbones.{backbone}.pretrain.batch_size", spec["pretrain"]["batch_size"]
    else:
        size = int(spec.get("encode_batch_size", 256))  # encode.ENCODE_BATCH_SIZE; importing it would import torch
        where = f"backbones.{backbone}.encode_batch_size (now {size})"
    return f"out of GPU memory in rule {rule} at batch size {size}; lower {where}"
