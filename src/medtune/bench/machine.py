"""The machine a bench ran on, and waiting for a device before reading a clock."""

from __future__ import annotations

import os
import platform
from datetime import datetime
from typing import Any


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": datetime.now().isoformat(timespec="seconds"),
    }


def describe_machine(m: dict[str, Any]) -> str:
    gpu = m["gpu"] or "no GPU"
    load = f", load average at start {m['load_average'][0]:.1f}" if m.get("load_average") else ""
    return f"{m['cpu_cores']} CPU cores, {gpu}; Python {m['python']}, torch {m['torch']}{load}"


def sync(device) -> None:
    """Wait for queued CUDA work, so that a timer read next covers it (a no-op on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
