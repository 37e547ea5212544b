"""What the benchmarks under scripts/bench share: the name of the machine they measured on."""
import platform
from pathlib import Path

import torch


def device_name(device=None) -> str:
    """The GPU's name for a CUDA device, else the CPU's model name (``/proc/cpuinfo``, or what platform knows):
    a timing means little without the hardware it was taken on."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
