"""The machine a benchmark ran on, printed with every table: CPU model and flags, load."""

from __future__ import annotations

import os
import platform
import subprocess
import time

# The flags that decide speed here: vector width and native bfloat16 / AMX.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16")


def lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine_lines() -> list[str]:
    """`lscpu` model, CPUs and the relevant flags; the date and the 1-minute load average."""
    fields = lscpu()
    flags = set(fields.get("Flags", "").split())
    present = [flag for flag in RELEVANT_FLAGS if flag in flags]
    absent = [flag for flag in RELEVANT_FLAGS if flag not in flags]
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- lscpu: model name `{fields.get('Model name', platform.processor() or '?')}`, "
        f"{fields.get('CPU(s)', os.cpu_count())} CPUs, vendor {fields.get('Vendor ID', '?')}, "
        f"family {fields.get('CPU family', '?')} model {fields.get('Model', '?')}",
        f"- lscpu flags present: {' '.join(present) or 'none'}; absent: {' '.join(absent) or 'none'}",
        f"- load average (1 min) at start: {os.getloadavg()[0]:.2f}",
    ]
