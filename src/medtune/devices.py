"""Give each GPU job a device of its own.

``snakemake --resources gpu=2`` caps how many jobs that declared ``gpu=1`` run at
once, but Snakemake never says WHICH device a job should use: without help every
job would pile onto device 0. :func:`acquire_gpu` hands devices out with one lock
file per device (``{lock_dir}/gpu{id}.lock``, held with ``fcntl.flock``) and points
``CUDA_VISIBLE_DEVICES`` at the device it took, before CUDA initialises.

``flock`` is used because the kernel drops the lock when its process dies, however
it dies (``SIGKILL``, out of memory, a crash): there are no stale locks to clean up.

The device pool, first match wins:

1. ``CUDA_VISIBLE_DEVICES`` as the user set it (``"3,5"`` -> devices 3 and 5;
   ``""`` or ``"-1"`` -> no device, nothing to do);
2. the ``n_devices`` argument -> ``0 .. n_devices-1``;
3. ``MEDTUNE_FAKE_GPUS=N`` (tests) -> ``0 .. N-1``;
4. the number of lines of ``nvidia-smi -L``; no ``nvidia-smi`` -> no device.

Inside a SLURM allocation that already handed out GPUs (``SLURM_JOB_ID`` set and
one of ``SLURM_STEP_GPUS``, ``SLURM_JOB_GPUS``, ``CUDA_VISIBLE_DEVICES`` set)
nothing is done: SLURM's choice stands.

Locks are per machine. The default lock folder is ``$MEDTUNE_GPU_LOCK_DIR``, else
``$XDG_RUNTIME_DIR/medtune-gpu-locks``, else ``/tmp/medtune-gpu-locks-$USER``. Point
``MEDTUNE_GPU_LOCK_DIR`` at one shared folder (mode 1777) to share a machine's GPUs
fairly between several users' workflows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "GpuUnavailableError",
    "acquire_gpu",
    "gpu_slots",
    "default_lock_dir",
    "device_pool",
    "slurm_assigned_gpus",
]

SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


class GpuUnavailableError(RuntimeError):
    """No device became free within the timeout, or CUDA was already initialised."""


def slurm_assigned_gpus(env: Mapping[str, str] | None = None) -> bool:
    """True inside a SLURM job that SLURM already gave GPUs to (or pinned devices for)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) and any(var in env for var in SLURM_GPU_VARS)


def _count_nvidia_smi() -> int:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip().startswith("GPU"))


def device_pool(n_devices: int | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The device ids a job may pick from (as CUDA_VISIBLE_DEVICES spells them)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        # CUDA stops at the first invalid entry: "-1" (or "0,-1,1" -> "0") hides the rest
        pool = []
        for dev in ids:
            if dev.startswith("-"):
                break
            pool.append(dev)
        return pool
    if n_devices is None:
        fake = env.get("MEDTUNE_FAKE_GPUS")
        n_devices = int(fake) if fake not in (None, "") else _count_nvidia_smi()
    return [str(i) for i in range(max(0, int(n_devices)))]


def gpu_slots(configured_device: str) -> int:
    """GPU slots a heavy job declares (Snakemake's ``gpu`` resource) for the config's ``device``:
    none on ``cpu``; one on ``cuda``/``cuda:N``; on ``auto``, one when this machine has a GPU
    (:func:`device_pool`: the one place that decides it without initialising CUDA)."""
    if configured_device == "cpu":
        return 0
    if configured_device == "auto":
        return 1 if device_pool() else 0
    return 1


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("MEDTUNE_GPU_LOCK_DIR"):
        return Path(env["MEDTUNE_GPU_LOCK_DIR"])
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "medtune-gpu-locks"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Path("/tmp") / f"medtune-gpu-locks-{user}"


def _lock_path(lock_dir: Path, dev: str) -> Path:
    # UUIDs (GPU-xxxx, MIG-xxxx) are ids too: keep the file name tame
    return lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', dev)}.lock"


def _open_lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:  # a shared folder, someone else's file: flock needs only read
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(path: Path) -> int | None:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    with contextlib.suppress(OSError):  # who holds it, for humans: cat gpuN.lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return fd


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a half-imported or stubbed torch
        return False


@contextlib.contextmanager
def acquire_gpu(
    n_devices: int | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    *,
    count: int = 1,
    poll: float = 0.2,
) -> Iterator[str | None]:
    """Hold ``count`` devices of the pool for the duration of the ``with`` block.

    Yields the chosen device id (a string such as ``"1"``; ``"1,3"`` for ``count=2``)
    after setting ``CUDA_VISIBLE_DEVICES`` to it, so the job then simply uses
    ``cuda`` / ``cuda:0``. Yields ``None`` and changes nothing when the machine has no
    GPU or SLURM already assigned the job's GPUs. Waits, polling every ``poll``
    seconds, while all devices are taken; ``timeout`` seconds (``None``: forever)
    later it raises :class:`GpuUnavailableError`. On exit the locks are released and
    ``CUDA_VISIBLE_DEVICES`` is restored; if the process dies the kernel releases them.
    """
    if slurm_assigned_gpus():
        yield None
        return
    pool = device_pool(n_devices)
    if not pool or count < 1:
        yield None
        return
    if count > len(pool):
        raise GpuUnavailableError(f"a job asked for {count} GPUs but this machine offers {len(pool)} ({','.join(pool)})")
    if _cuda_initialised():
        raise GpuUnavailableError("acquire_gpu() must run before CUDA is initialised (CUDA_VISIBLE_DEVICES is read once)")

    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    try:
        while True:
            for dev in pool:
                if len(held) == count:
                    break
                if dev not in held:
                    fd = _try_lock(_lock_path(folder, dev))
                    if fd is not None:
                        held[dev] = fd
            if len(held) == count:
                break
            if count > 1:  # never sit on part of a set while waiting: two jobs could deadlock
                for fd in held.values():
                    os.close(fd)
                held.clear()
            if deadline is not None and time.monotonic() >= deadline:
                raise GpuUnavailableError(
                    f"no free GPU among {','.join(pool)} after {timeout:g} s (locks in {folder}); "
                    "is another workflow using them? run with fewer --resources gpu="
                )
            if not warned:
                print(f"medtune: all GPUs ({','.join(pool)}) busy, waiting (locks in {folder})", file=sys.stderr)
                warned = True
            time.sleep(poll)

        chosen = ",".join(sorted(held, key=pool.index))
        previous = {var: os.environ.get(var) for var in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        # index i = nvidia-smi's GPU i (CUDA's default order is fastest first)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ["CUDA_VISIBLE_DEVICES"] = chosen
        try:
            yield chosen
        finally:
            for var, value in previous.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    finally:
        for fd in held.values():
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the flock
