"""Which machine a figure was measured on: speeds are only comparable on the same one.

The same 2-core CPU budget runs 1.5x apart between an AVX-512 Xeon and an AVX2 EPYC, so every
timing vtagml writes (``metrics.json``, ``benchmark.md``, the benchmarks' tables) names its device.
"""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``; "unknown CPU")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_device(device: torch.device | str) -> str:
    """One line naming a device: ``"NVIDIA H100 80GB HBM3"``, or for a CPU its model, usable cores,
    vector instruction set as PyTorch dispatches it, and PyTorch's threads, e.g.
    ``"AMD EPYC, 2 cores, AVX2, 2 threads"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = torch.get_num_threads()
    return (f"{cpu_name()}, {cores} cores, {torch.backends.cpu.get_cpu_capability()}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
