"""Android phones over adb: discovery, fingerprint, big-core pinning, thermal gating, and a worker
that times each block with the user's ExecuTorch runner on the phone.

Every adb call names its phone (`adb -s SERIAL`). Blocks are exported on this host to `.pte`
(XNNPACK) and pushed once; the runner (`executor_runner` built for arm64, see the README) runs
them pinned to the big cores with `taskset`, and its per-iteration log lines are parsed.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profilers.backends.executorch_cpu import program_bytes, program_lowering
from profilers.errors import BlockFailed, ProfilerError
from profilers.targets import parse_target
from profilers.worker import Timing

REMOTE_DIR = "/data/local/tmp/lut"
ADB_TIMEOUT_S = 120.0
THERMAL_WAIT_S = 300.0  # longest wait for a hot phone to cool before measuring anyway (and saying so)
HOW_TO_CONNECT = (
    "connect a phone over USB with USB debugging on (Settings > Developer options), accept its prompt, "
    "and check that `adb devices` lists it as 'device'"
)


@dataclass(frozen=True)
class Phone:
    """One line of `adb devices -l`."""

    serial: str
    state: str  # "device", "unauthorized", "offline", ...
    model: str = ""
    product: str = ""

    def describe(self) -> str:
        return f"{self.serial} ({self.model or 'unknown model'}, {self.state})"


def parse_devices(output: str) -> list[Phone]:
    """Phones listed by `adb devices -l`."""
    phones = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        fields = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        phones.append(Phone(parts[0], parts[1], fields.get("model", ""), fields.get("product", "")))
    return phones


ITERATION = re.compile(r"Iteration (\d+) of (\d+): ([0-9.]+) ms")
TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms")


def parse_runner_output(output: str, warmups: int) -> list[float]:
    """Per-iteration times (us) from ExecuTorch's executor_runner log, warm-ups dropped.

    Builds that log no per-iteration lines give only a mean including the cold runs: refused,
    since it cannot be told apart from a warm time.
    """
    times = [float(m.group(3)) * 1e3 for m in ITERATION.finditer(output)]
    if times:
        return times[warmups:]
    if TOTAL.search(output):
        raise BlockFailed(
            "the runner printed only a total time (an older executor_runner): rebuild it from ExecuTorch 0.5 or "
            "newer, which logs each iteration"
        )
    tail = " | ".join(output.strip().splitlines()[-3:])
    raise BlockFailed(f"the runner printed no timings: {tail or 'no output'}")


def parse_thermal_status(dumpsys: str) -> int | None:
    match = re.search(r"Thermal Status:\s*(\d+)", dumpsys)
    return int(match.group(1)) if match else None


def big_core_mask(max_freqs_khz: dict[int, int]) -> tuple[str, int]:
    """(taskset hex mask of the fastest cores, their count) from each core's cpuinfo_max_freq."""
    if not max_freqs_khz:
        return "", 0
    top = max(max_freqs_khz.values())
    cores = [cpu for cpu, freq in max_freqs_khz.items() if freq == top]
    return format(sum(1 << cpu for cpu in cores), "x"), len(cores)


class Adb:
    """The real `adb` binary, one phone at a time (`-s SERIAL` on every call)."""

    def __init__(
        self, serial: str | None = None, binary: str = "adb", sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise ProfilerError(
                "adb is not installed: install Android's platform tools (Debian: apt-get install adb), then "
                + HOW_TO_CONNECT
                + "."
            )
        self.serial = serial
        self.sleep = sleep

    def _run(self, args: list[str], timeout: float = ADB_TIMEOUT_S, check: bool = True) -> str:
        command = [self.binary, *(["-s", self.serial] if self.serial else []), *args]
        try:
            proc = subprocess.run(  # in a session of its own: Ctrl-C is lut's to handle, not the phone's run's
                command, capture_output=True, text=True, timeout=timeout, check=False, start_new_session=True
            )
        except subprocess.TimeoutExpired:
            raise ProfilerError(f"adb {' '.join(args[:2])} did not answer in {timeout:.0f} s.") from None
        if check and proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip().splitlines()
            raise ProfilerError(f"adb {' '.join(args[:2])} failed: {message[-1] if message else proc.returncode}.")
        return proc.stdout

    def devices(self) -> list[Phone]:
        return parse_devices(self._run(["devices", "-l"]))

    def shell(self, command: str, timeout: float = ADB_TIMEOUT_S, check: bool = True) -> str:
        return self._run(["shell", command], timeout=timeout, check=check)

    def push(self, local: Path, remote: str) -> None:
        self._run(["push", str(local), remote])

    def getprop(self, name: str) -> str:
        return self.shell(f"getprop {name}").strip()


def choose_phone(adb: Adb, name: str, serial: str | None) -> Phone:
    """The phone to use: `--serial`, or the one ready phone whose model matches the device name
    (`pixel` matches Pixel models), or, for another name, the only ready phone."""
    phones = adb.devices()
    listed = "; ".join(p.describe() for p in phones) or "none"
    if serial is not None:
        for phone in phones:
            if phone.serial == serial:
                if phone.state != "device":
                    raise ProfilerError(f"Phone {phone.describe()} is not ready ({phone.state}); {HOW_TO_CONNECT}.")
                return phone
        raise ProfilerError(f"No phone with serial {serial} is connected (connected: {listed}).")
    ready = [p for p in phones if p.state == "device"]
    if not phones:
        taken = "" if name == "pixel" else f" (device '{name}' is taken for a phone: it is not cpu or cuda[:N])"
        raise ProfilerError(f"No Android device is connected{taken}: {HOW_TO_CONNECT}.")
    token = name.lower().replace("-", " ").replace("_", " ")
    matching = [p for p in ready if token in p.model.lower().replace("_", " ")]
    if not matching and name != "pixel" and len(ready) == 1:
        matching = ready  # a name of the user's own for the one phone there is
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise ProfilerError(
            f"No ready phone matches device '{name}' (connected: {listed}); pass --serial, or {HOW_TO_CONNECT}."
        )
    raise ProfilerError(f"Several phones match device '{name}' ({listed}); pick one with --serial.")


@dataclass
class PhoneInfo:
    serial: str
    model: str
    soc: str
    fingerprint: str
    abi: str
    max_freqs_khz: dict[int, int] = field(default_factory=dict)

    @property
    def mask(self) -> tuple[str, int]:
        return big_core_mask(self.max_freqs_khz)

    def identity(self) -> dict[str, Any]:
        return {"model": self.model, "soc": self.soc, "abi": self.abi}

    def to_dict(self) -> dict[str, Any]:
        mask, cores = self.mask
        return {
            **self.identity(),
            "serial": self.serial,
            "build_fingerprint": self.fingerprint,
            "cpu_max_freq_khz": {str(k): v for k, v in sorted(self.max_freqs_khz.items())},
            "big_core_mask": mask,
            "big_cores": cores,
        }


def read_phone(adb: Adb, phone: Phone) -> PhoneInfo:
    freqs = {}
    listing = adb.shell(
        "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
        "echo ${c##*cpu} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); done",
        check=False,
    )
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            freqs[int(parts[0])] = int(parts[1])
    soc = adb.getprop("ro.soc.model") or adb.getprop("ro.board.platform") or adb.getprop("ro.hardware")
    return PhoneInfo(
        serial=phone.serial,
        model=adb.getprop("ro.product.model") or phone.model,
        soc=soc,
        fingerprint=adb.getprop("ro.build.fingerprint"),
        abi=adb.getprop("ro.product.cpu.abi"),
        max_freqs_khz=freqs,
    )


def thermal(adb: Adb) -> dict[str, Any]:
    """Thermal status (0: none) and zone temperatures (degrees C) where readable."""
    status = parse_thermal_status(adb.shell("dumpsys thermalservice", check=False))
    zones = adb.shell(
        "for z in /sys/class/thermal/thermal_zone*; do echo $(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null); "
        "done",
        check=False,
    )
    temperatures = {}
    for line in zones.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            value = int(parts[1])
            temperatures[parts[0]] = value / 1000 if abs(value) > 200 else float(value)  # milli-degrees or degrees
    return {"thermal_status": status, "temperatures_c": temperatures}


class AndroidWorker:
    """Times targets on a phone with the same interface as a host Worker (measure, forget)."""

    def __init__(
        self,
        adb: Adb,
        phone: PhoneInfo,
        runner: Path,
        threads: int,
        export: Callable[[str], bytes],
        version: str = "unknown",
    ) -> None:
        mask, cores = phone.mask
        if threads > max(cores, 1):
            raise ProfilerError(
                f"--threads {threads} is more than the {cores} big cores of {phone.model}; use at most {cores}."
            )
        self.adb, self.phone, self.runner, self.threads, self.export = adb, phone, runner, threads, export
        self.mask, self.version = mask, version
        self._pushed: dict[str, str] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="lut-pte-"))
        self.info: dict[str, Any] = {}

    def start(self) -> AndroidWorker:
        self.adb.shell(f"mkdir -p {REMOTE_DIR}")
        self.adb.push(self.runner, f"{REMOTE_DIR}/executor_runner")
        self.adb.shell(f"chmod +x {REMOTE_DIR}/executor_runner")
        self.info = {
            "backend_version": self.version,
            "environment": {"phone": self.phone.to_dict()},
            "protocol": {
                "runner": self.runner.name,
                "taskset_mask": self.mask,
                "delegate": "XnnpackPartitioner",
                "thermal_gating": True,
            },
        }
        return self

    def __enter__(self) -> AndroidWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    @property
    def workers(self) -> list[AndroidWorker]:  # the pool interface: one phone, one worker
        return [self]

    def restart(self) -> None:
        self._pushed.clear()
        self.start()

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            remote = self._pushed.pop(key, None)
            if remote:
                self.adb.shell(f"rm -f {remote}", check=False)

    def _push(self, key: str) -> str:
        if key not in self._pushed:
            try:
                program = self.export(key)
            except Exception as exc:  # export errors are the block's, not the phone's
                raise BlockFailed(f"export to .pte failed: {type(exc).__name__}: {exc}") from exc
            name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".pte"
            local = self._workdir / name
            local.write_bytes(program)
            self.adb.push(local, f"{REMOTE_DIR}/{name}")
            self._pushed[key] = f"{REMOTE_DIR}/{name}"
        return self._pushed[key]

    def _wait_until_cool(self) -> dict[str, Any]:
        deadline = time.monotonic() + THERMAL_WAIT_S
        state = thermal(self.adb)
        waited = 0.0
        poll_s = float(os.environ.get("LUT_THERMAL_POLL_S", "5"))
        while (state["thermal_status"] or 0) > 0 and time.monotonic() < deadline:
            self.adb.sleep(poll_s)
            waited += poll_s
            state = thermal(self.adb)
        return {**state, "waited_s": waited}

    def _run(self, remote: str, executions: int) -> str:
        command = (
            f"taskset {self.mask} {REMOTE_DIR}/executor_runner --model_path={shlex.quote(remote)} "
            f"--num_executions={executions} --cpu_threads={self.threads} --print_output=none"
        )
        # A crash shows as missing iteration lines: parse_runner_output says so with the log's tail.
        return self.adb.shell(command + " 2>&1", check=False, timeout=ADB_TIMEOUT_S * 5)

    def measure(self, key: str, plan: Any) -> Any:
        remote = self._push(key)
        before = self._wait_until_cool()
        warmups, runs = plan.warmup_runs, plan.min_runs
        if plan.min_time_s > 0 or plan.warmup_s > 0:
            # A short probe sizes the real run: warm-ups and iterations that fill the time budgets.
            probe = parse_runner_output(self._run(remote, plan.warmup_runs + 3), plan.warmup_runs)
            per_call_s = max(sorted(probe)[len(probe) // 2] / 1e6, 1e-6)
            runs = max(plan.min_runs, math.ceil(plan.min_time_s / per_call_s))
            runs = min(runs, max(plan.min_runs, math.ceil(plan.max_time_s / per_call_s)))
            warmups = max(plan.warmup_runs, math.ceil(plan.warmup_s / per_call_s))
        samples = parse_runner_output(self._run(remote, warmups + runs), warmups)
        after = thermal(self.adb)
        self.info["environment"]["last_thermal"] = {"before": before, "after": after}
        return Timing(samples, warmups, lowering=program_lowering(parse_target(key)))


def export_pte(key: str) -> bytes:
    """A block (or whole network) lowered to ExecuTorch with the XNNPACK delegate."""
    return program_bytes(parse_target(key))
