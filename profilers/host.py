"""What this host is (fingerprint, identity) and what it is doing (environment per row)."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
            value = line.split(":", 1)[1].strip()
            if value and not value.isdigit():
                return value
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def host_identity() -> dict[str, Any]:
    """The stable part: a table row measured on one CPU must not be reused for another."""
    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count() or 1, "machine": platform.machine()}


def host_fingerprint() -> dict[str, Any]:
    return {
        **host_identity(),
        "usable_cpus": usable_cpus(),
        "os": platform.platform(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "max_freq_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
    }


def host_environment() -> dict[str, Any]:
    """Conditions at measurement time, stored with each row."""
    env: dict[str, Any] = {"usable_cpus": usable_cpus()}
    try:
        load1, load5, _ = os.getloadavg()
        env.update(loadavg_1m=round(load1, 2), loadavg_5m=round(load5, 2))
    except OSError:
        pass
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        env["governor"] = governor
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if freq:
        env["cur_freq_khz"] = int(freq)
    return env
