"""Which machine a figure was measured on: speeds are only comparable on the same one.

Two "2-core" machines can differ by more than a change of code does (the demo took 315-372 s on an
AVX-512 Xeon VM and 477 s on an AVX2 EPYC VM), so every timing vtagml writes (``metrics.json``,
``benchmark.md``, the benchmarks' tables) names its device.
"""

from __future__ import annotations

import os
import platform

import torch


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name: ``model name`` of ``cpuinfo`` (Linux x86), else ``platform.processor()``,
    else the architecture (``platform.machine()``, e.g. "aarch64"), else "unknown CPU"."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_device(device: torch.device | str) -> str:
    """One line naming a device: a GPU's name (``"NVIDIA H100 80GB HBM3"``), or for a CPU its model,
    usable logical CPUs, the vector instruction set PyTorch dispatches and PyTorch's threads, e.g.
    ``"AMD EPYC, 2 CPUs, AVX2, 2 threads"``; other device types by their type."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    return (f"{cpu_name()}, {_plural(usable_cpus(), 'CPU')}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{_plural(torch.get_num_threads(), 'thread')}")
