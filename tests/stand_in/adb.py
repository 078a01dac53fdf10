"""A stand-in for `adb` that emulates phones: `devices -l`, `-s SERIAL shell|push`.

Configured by the JSON file in $FAKE_ADB_CONFIG: {"root": DIR, "log": FILE, "devices": [{"serial",
"state", "model", "product", "props": {...}, "max_freqs_khz": [...], "thermal": [statuses...],
"speed": 1.0, "sleep": false, "program_ms": null}]}.
A phone's shell runs the command with /bin/sh in DIR/SERIAL, where /data/local/tmp and /sys map to
folders there and getprop, dumpsys and taskset are small scripts; so whatever lut pushes (the
runner, the .pte files) really runs, on this host. Every invocation is logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def load() -> dict:
    return json.loads(Path(os.environ["FAKE_ADB_CONFIG"]).read_text())


def phone_root(config: dict, device: dict) -> Path:
    root = Path(config["root"]) / device["serial"]
    if (root / ".ready").exists():
        return root
    (root / "data/local/tmp").mkdir(parents=True, exist_ok=True)
    for cpu, freq in enumerate(device.get("max_freqs_khz", [])):
        folder = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpuinfo_max_freq").write_text(f"{freq}\n")
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-big\n")
    (zone / "temp").write_text("41500\n")
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    props = "\n".join(f'  {k}) echo "{v}";;' for k, v in device.get("props", {}).items())
    scripts = {
        "getprop": f'#!/bin/sh\ncase "$1" in\n{props}\n  *) echo "";;\nesac\n',
        # The thermal status follows the list in the config, one entry per call, then stays at 0.
        "dumpsys": '#!/bin/sh\nf="$PHONE_ROOT/thermal"\nn=$(cat "$f" 2>/dev/null || echo 0)\n'
        'status=$(sed -n "$((n+1))p" "$PHONE_ROOT/thermal_list" 2>/dev/null)\necho $((n+1)) > "$f"\n'
        'echo "IsStatusOverride: false"\necho "Thermal Status: ${status:-0}"\n',
        "taskset": '#!/bin/sh\necho "$1" >> "$PHONE_ROOT/taskset_masks"\nshift\nexec "$@"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (root / "thermal_list").write_text("".join(f"{s}\n" for s in device.get("thermal", [])))
    (root / ".ready").write_text("")
    return root


def mapped(root: Path, text: str) -> str:
    return text.replace("/data/local/tmp", str(root / "data/local/tmp")).replace("/sys/", str(root / "sys") + "/")


def main(argv: list[str]) -> int:
    config = load()
    with open(config["log"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    if argv[:1] == ["devices"]:
        print("List of devices attached")
        for d in config["devices"]:
            extra = "" if d["state"] != "device" else f" product:{d.get('product', '')} model:{d.get('model', '')}"
            print(f"{d['serial']}\t{d['state']} usb:1-1{extra} transport_id:1")
        print()
        return 0
    devices = [d for d in config["devices"] if d["serial"] == serial] if serial else config["devices"]
    if not devices:
        print(f"adb: device '{serial}' not found", file=sys.stderr)
        return 1
    if len(devices) > 1:
        print("adb: more than one device/emulator", file=sys.stderr)
        return 1
    device = devices[0]
    if device["state"] != "device":
        print(f"adb: device {device['state']}", file=sys.stderr)
        return 1
    root = phone_root(config, device)
    if argv[:1] == ["push"]:
        target = Path(mapped(root, argv[2]))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(argv[1], target)
        print(f"{argv[1]}: 1 file pushed, 0 skipped.")
        return 0
    if argv[:1] == ["shell"]:
        env = {
            **os.environ,
            "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "PHONE_ROOT": str(root),
            "PHONE_SPEED": str(device.get("speed", 1.0)),  # a slower unit of the same model: 1.3
            "PHONE_SLEEP": "1" if device.get("sleep") else "",  # busy for the time it reports (a farm's bench)
            # every program takes this long per execution (times the speed) instead of growing with its size
            "PHONE_PROGRAM_MS": str(device.get("program_ms") or ""),
        }
        return subprocess.run(["/bin/sh", "-c", mapped(root, " ".join(argv[1:]))], env=env, check=False).returncode
    print(f"adb: unknown command {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
