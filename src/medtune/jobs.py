"""The one wrapper every workflow script runs its work through.

It sends the job's output to its Snakemake log, sets the thread count Snakemake
granted, and turns the errors medtune raises on bad input into one line naming
the culprit (on stderr and in the log) instead of a traceback; so are the faults of the
machine rather than the data: a full or read-only disk (naming the path and the space
left on its file system), memory running out, and an interrupt (Ctrl-C, or the SIGTERM
a scheduler or Snakemake sends), which still runs every cleanup, so the atomic writers
remove their temporaries. The full traceback goes to the job's log. When the work ends,
it logs one line (:data:`USAGE_PREFIX`) of what the job used, as the kernel counts it: wall and CPU
seconds since the process started, and the peak resident memory. Snakemake's
benchmark files sample memory every 30 s once a job has run for 30 s, so they can
miss a short peak; this line cannot.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import sys
import time
from typing import Any, Callable

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, MemoryError)
USAGE_PREFIX = "medtune usage: "
ERROR_PREFIX = "medtune error: "
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` (the atomic
    writers' removal of their temporaries) runs before the job exits."""


def _one_line_interrupt_hook(hook):
    """``sys.excepthook`` that prints an interrupt outside :func:`run` (while a script
    imports its modules) as one line instead of a traceback."""

    def excepthook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print(f"{ERROR_PREFIX}interrupted before the job started its work; nothing was written", file=sys.__stderr__)
            return
        hook(kind, value, tb)

    return excepthook


# a job script imports this module first; from then on an interrupt is one line
sys.excepthook = _one_line_interrupt_hook(sys.excepthook)


# every thread pool that sums floats in a forward or backward pass: OpenMP (torch's own), MKL
# (torch's matrix products) and OpenBLAS (NumPy's). A job whose MKL pool were sized by
# Snakemake's cores rather than by its torch threads would train to other weights.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cores_held(smk) -> int:
    """The cores Snakemake holds for a job (its rule's threads)."""
    return max(1, int(getattr(smk, "threads", 1) or 1))


def compute_threads(smk) -> int:
    """The threads a job computes with: a model job's ``params.torch_threads`` (config
    ``model_threads``, part of its numbers), else the cores Snakemake holds for it."""
    declared = getattr(getattr(smk, "params", None), "torch_threads", None)
    return max(1, int(declared)) if declared else cores_held(smk)


def run(main: Callable[[object], None], smk) -> None:
    log_path = smk.log[0] if len(smk.log) else None
    logged = log_path is not None
    if "medtune.memory" in sys.modules:  # an estimate stated by an earlier job of this process is not this job's
        sys.modules["medtune.memory"].forget()
    threads = compute_threads(smk)
    # torch sizes its thread pool from these when it is first imported (light jobs: subsets,
    # tables, figures never import it and should not pay for it); Snakemake sets them to the
    # cores it holds for the job, which for a model job are fewer than its threads
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    if threads > cores_held(smk):
        # more threads than cores: a thread waiting at the end of a parallel step sleeps
        # instead of spinning on a core that another job's thread needs
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    with contextlib.ExitStack() as stack:
        if log_path:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            # a file or folder name that is not UTF-8 must not turn a message into a UnicodeEncodeError
            log = stack.enter_context(open(log_path, "w", buffering=1, errors="backslashreplace"))
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
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
            stack.callback(signal.signal, signal.SIGTERM, previous)
            with _usage_line():
                main(smk)
        except KeyboardInterrupt as err:
            _fail(logged, f"{'terminated (SIGTERM)' if isinstance(err, Interrupted) else 'interrupted (Ctrl-C)'} in rule "
                  f"{getattr(smk, 'rule', 'job')}; its outputs were not written and no partial file remains: "
                  "rerun to continue", status=130)
        except KNOWN_ERRORS as err:
            _fail(logged, error_message(err, smk))


def _raise_interrupted(signum, frame):
    raise Interrupted()


def _fail(logged: bool, message: str, status: int = 1) -> None:
    """The traceback in the log; one line on the terminal (and in the log): then exit."""
    import traceback

    print(ERROR_PREFIX + message, file=sys.__stderr__, flush=True)  # first: the log may be on a full disk
    if logged:  # the details go to the job's log, never to the terminal
        with contextlib.suppress(OSError):
            traceback.print_exc()
            print(ERROR_PREFIX + message)
    raise SystemExit(status) from None


def error_message(err: BaseException, smk) -> str:
    """One line for a failed job: what went wrong and, for the machine's faults, where and what to do."""
    if _is_out_of_memory(err):
        return oom_message(smk)
    if isinstance(err, MemoryError):
        return (f"out of memory in rule {getattr(smk, 'rule', 'job')} ({err or 'the system refused an allocation'}); "
                "run it with more memory (resources: mem_mb) or fewer jobs at once")
    if isinstance(err, OSError) and err.errno in (*DISK_FULL, errno.EROFS):
        path = err.filename or _first_output(smk) or "?"
        where = free_space(path)
        if err.errno == errno.EROFS:
            return f"cannot write {path}: read-only file system{where}; point results: at a writable folder"
        return (f"no space left on the device writing {path}{where}; free some space and rerun "
                "(finished outputs are kept, nothing half-written remains)")
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _first_output(smk) -> str | None:
    outputs = list(getattr(smk, "output", []) or [])
    return str(outputs[0]) if outputs else None


def free_space(path: str | os.PathLike) -> str:
    """`` (12.0 MB free of 1.0 GB on /mount)`` for the file system holding ``path`` (or its nearest
    existing folder); empty when even that cannot be found."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return ""
    mount = folder
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return f" ({_size(usage.free)} free of {_size(usage.total)} on {mount})"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def as_list(files) -> list:
    """A named input of a job as a list: Snakemake gives one file as a string, several as a list."""
    return [files] if isinstance(files, str) else list(files)


def report(message: str) -> None:
    """One plain progress line in the job's log (``medtune: ...``), flushed at once: a reader
    (a user's ``tail -f``, a test waiting for a stage) sees how far the job got."""
    print(f"medtune: {message}", flush=True)


@contextlib.contextmanager
def _usage_line():
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a full disk must not hide the job's own error behind this line's
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
