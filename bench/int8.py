"""int8 on ExecuTorch/XNNPACK: does lut's int8 estimate match a user's own int8 network, and which models move?

For the FBNetV2 family, fp32 and int8 end to end as a user times them: each network exported by the
documented quantize-and-export recipe (USER_EXPORT below: PT2E with XNNPACKQuantizer, then the XNNPACK
partitioner), in a process of its own, and timed by a user's loop (`executorch.runtime`, one thread, a
second of warm-up, the median of 100 calls) in fresh plain processes, fp32 and int8 interleaved. Beside
them, lut's int8 estimates from the table (`lut profile --backend executorch --dtype int8`): the plain
block sum and the estimate calibrated on sampled architectures only (`lut calibrate`, never a family
model). Reported: the int8 speed-up per model, within 10% / RMSPE / Kendall tau of each estimate against
the user's int8 loop, the blocks whose programs run ops outside the XNNPACK delegate (from the table's
rows) and the ops outside it in the user's whole int8 program, and the family's order by the user's
fp32 time, by the user's int8 time and by lut's int8 estimate.

    python -m bench.int8 [--calibration 12] [--user-loops 2] [--db FILE] [--out FILE.json]

Every program is exported before anything is timed (two processes on this host), so that no export
runs beside a measurement. The table is kept (`--db`): a second run measures only what it lacks; the
user's loops are taken afresh every time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.reference_check import sampled, user_loop_ms
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import error_metrics
from latency.jobs.calibrate import calibrate
from latency.jobs.measure import profile_blocks
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT
from latency.vocab.family import family_archs
from lut_db import LutStore

RESULTS = Path(__file__).parent / "results"

# The user's recipe, as ExecuTorch documents it for XNNPACK: quantize with PT2E (int8 only), lower,
# write the program. argv: ARCH.json OUT.pte DTYPE.
USER_EXPORT = """
import sys, torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from executorch.exir import to_edge_transform_and_lower
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from latency.nn.fbnet import fbnetv2
model = fbnetv2(sys.argv[1]).eval()
x = torch.randn(1, 3, model.arch.resolution, model.arch.resolution)
if sys.argv[3] == "int8":
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    model = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for _ in range(4):
        model(torch.randn_like(x))  # calibration: the activations' ranges
    model = convert_pt2e(model)
lowered = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
open(sys.argv[2], "wb").write(lowered.to_executorch().buffer)
"""

DTYPES = ("fp32", "int8")


def user_export(arch_json: str, out: str, dtype: str) -> str:
    subprocess.run(
        [sys.executable, "-c", USER_EXPORT, arch_json, out, dtype],
        env=DEFAULT.process_env(os.environ),
        check=True,
        capture_output=True,
    )
    return out


def lut_export(key: str) -> int:
    """lut's own program of a block or network, into its cache (profilers.backends.executorch_cpu)."""
    from profilers.backends.executorch_cpu import program_bytes
    from profilers.targets import parse_target

    return len(program_bytes(parse_target(key)))


def export_everything(family: list[Arch], calibration_set: list[Arch], folder: Path) -> dict[tuple[str, str], Path]:
    """Every program this bench will run, exported two at a time before any timing: lut's int8 and fp32
    blocks, lut's int8 calibration networks, the user's fp32 and int8 family networks."""
    from profilers.backends.executorch_cpu import program_path
    from profilers.targets import ArchTarget

    targets = {s.key: s for a in family + calibration_set for d in DTYPES for s in a.specs(dtype=d)}
    targets.update({t.key: t for t in (ArchTarget(a, dtype="int8") for a in calibration_set)})
    todo = [key for key, target in targets.items() if not program_path(target).exists()]
    user = {}
    started = time.monotonic()
    with ProcessPoolExecutor(2) as pool:
        futures = []
        for arch in family:
            arch_json = folder / f"{arch.name}.json"
            arch_json.write_text(arch.to_json())
            for dtype in DTYPES:
                user[arch.name, dtype] = folder / f"{arch.name}-{dtype}.pte"
                futures.append(pool.submit(user_export, str(arch_json), str(user[arch.name, dtype]), dtype))
        futures += [pool.submit(lut_export, key) for key in todo]
        for done, future in enumerate(futures, start=1):
            future.result()
            if done % 25 == 0 or done == len(futures):
                print(f"  exported {done}/{len(futures)} ({time.monotonic() - started:.0f} s)", flush=True)
    return user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=12, help="sampled architectures to calibrate int8 on")
    parser.add_argument("--user-loops", type=int, default=2, help="a user's loops per network and dtype")
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--db", default=str(RESULTS / "int8.sqlite"))
    parser.add_argument("--out", type=Path, default=RESULTS / "int8.json")
    args = parser.parse_args()
    from profilers.backends.executorch_cpu import outside_delegate

    family = family_archs(["all"])
    calibration_set = sampled(args.calibration, seed=0)
    conditions = {d: Conditions("cpu", "executorch", 1, dtype=d) for d in DTYPES}
    started = time.monotonic()
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    with LutStore(args.db) as store, tempfile.TemporaryDirectory() as tmp:
        print("exporting every program first", flush=True)
        user_programs = export_everything(family, calibration_set, Path(tmp))
        export_s = time.monotonic() - started
        for dtype in DTYPES:  # fp32: the family only (its plain sum ranks it); int8: the calibration set too
            archs = family + (calibration_set if dtype == "int8" else [])
            specs = list({s.key: s for a in archs for s in a.specs(dtype=dtype)}.values())
            summary = profile_blocks(specs, store, conditions[dtype], args.protocol)
            print(f"{dtype} blocks: {summary.measured} measured, {summary.already_present} in the table", flush=True)
        report = calibrate(store, calibration_set, conditions["int8"], args.protocol)
        print(f"int8 calibrated on {report.runs} sampled architectures: {report.correction.variant}", flush=True)
        plain = {d: Estimator(conditions[d], store=store, use_calibration=False) for d in DTYPES}
        calibrated = Estimator(conditions["int8"], store=store)
        int8_rows = store.measurement_map(conditions["int8"])
        rows = []
        for arch in family:
            loops: dict[str, list[float]] = {d: [] for d in DTYPES}
            for i in range(args.user_loops):  # fp32 and int8 interleaved, the order turned each round
                for dtype in DTYPES if i % 2 == 0 else DTYPES[::-1]:
                    loops[dtype].append(user_loop_ms("executorch", user_programs[arch.name, dtype], 1))
            int8_keys = [s.key for s in arch.specs(dtype="int8")]
            fallbacks = {k: int8_rows[k].provenance.protocol.get("outside_delegate", {}) for k in int8_keys}
            row = {
                "name": arch.name,
                **{f"user_{d}_ms": statistics.median(loops[d]) for d in DTYPES},
                **{f"user_{d}_runs_ms": loops[d] for d in DTYPES},
                "plain_fp32_ms": plain["fp32"].estimate(arch).latency_ms,
                "plain_int8_ms": plain["int8"].estimate(arch).latency_ms,
                "calibrated_int8_ms": calibrated.estimate(arch).latency_ms,
                "calibrated_int8_interval_ms": list(calibrated.estimate(arch).interval_ms),
                "blocks": len(int8_keys),
                "blocks_outside_delegate": sum(map(bool, fallbacks.values())),
                "ops_outside_delegate": sorted({op for ops in fallbacks.values() for op in ops}),
                "user_program_outside_delegate": outside_delegate(user_programs[arch.name, "int8"].read_bytes()),
            }
            row["speedup"] = row["user_fp32_ms"] / row["user_int8_ms"]
            rows.append(row)
            print(
                f"  {arch.name:12s} user fp32 {row['user_fp32_ms']:7.3f} ms  int8 {row['user_int8_ms']:7.3f} "
                f"(x{row['speedup']:.2f})  lut int8 plain {row['plain_int8_ms']:7.3f}  "
                f"calibrated {row['calibrated_int8_ms']:7.3f}",
                flush=True,
            )
    seconds = time.monotonic() - started
    user_int8 = np.array([r["user_int8_ms"] for r in rows])
    metrics = {
        c: error_metrics(np.array([r[c] for r in rows]), user_int8) for c in ("plain_int8_ms", "calibrated_int8_ms")
    }
    metrics["plain_fp32_ms"] = error_metrics(
        np.array([r["plain_fp32_ms"] for r in rows]), np.array([r["user_fp32_ms"] for r in rows])
    )
    orders = {
        "user_fp32": [r["name"] for r in sorted(rows, key=lambda r: r["user_fp32_ms"])],
        "user_int8": [r["name"] for r in sorted(rows, key=lambda r: r["user_int8_ms"])],
        "lut_int8": [r["name"] for r in sorted(rows, key=lambda r: r["calibrated_int8_ms"])],
        "lut_fp32": [r["name"] for r in sorted(rows, key=lambda r: r["plain_fp32_ms"])],
    }
    gaps = [
        abs(a - b) / ((a + b) / 2)
        for r in rows
        for d in DTYPES
        for i, a in enumerate(r[f"user_{d}_runs_ms"])
        for b in r[f"user_{d}_runs_ms"][i + 1 :]
    ]
    result = {
        "machine": "this host's CPU (2 cores), ExecuTorch/XNNPACK, 1 thread",
        "protocol": args.protocol,
        "calibration_runs": report.runs,
        "correction": report.correction.variant,
        "calibration_cv_rmspe": report.correction.metrics.get("cv_rmspe"),
        "calibration_in_sample_median_ratio": report.correction.metrics.get("in_sample_median_ratio"),
        "metrics": metrics,
        "targets": {
            "calibrated_within_10pct_models": round(metrics["calibrated_int8_ms"]["within_10pct"] * len(rows)),
            "calibrated_kendall_tau": metrics["calibrated_int8_ms"]["kendall_tau"],
            "met": metrics["calibrated_int8_ms"]["within_10pct"] * len(rows) >= 6
            and (metrics["calibrated_int8_ms"]["kendall_tau"] or 0) >= 0.9,
        },
        "orders": orders,
        "rank_changes_fp32_to_int8_user": [
            n for n in orders["user_int8"] if orders["user_int8"].index(n) != orders["user_fp32"].index(n)
        ],
        "user_loop_gap": {"median": float(np.median(gaps)), "max": float(np.max(gaps))} if gaps else None,
        "export_seconds": round(export_s, 1),
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    print(f"\nint8 against a user's int8 loop (ExecuTorch/XNNPACK, 1 thread), n={len(rows)}:")
    print(f"{'estimate':22s}{'within 10%':>12s}{'RMSPE':>8s}{'tau':>7s}{'median err':>12s}")
    for column, m in metrics.items():
        tau = float("nan") if m["kendall_tau"] is None else m["kendall_tau"]
        print(f"{column:22s}{m['within_10pct']:>12.0%}{m['rmspe']:>8.1%}{tau:>7.3f}{m['median_error']:>+12.1%}")
    print(f"\n{'model':14s}{'fp32 ms':>9s}{'int8 ms':>9s}{'speed-up':>9s}{'blocks w/ fallback':>20s}  ops outside")
    for r in rows:
        ops = ", ".join(r["ops_outside_delegate"]) or "-"
        print(
            f"{r['name']:14s}{r['user_fp32_ms']:>9.3f}{r['user_int8_ms']:>9.3f}{r['speedup']:>9.2f}"
            f"{r['blocks_outside_delegate']:>12d} of {r['blocks']:<5d}  {ops}"
        )
    for name, order in orders.items():
        print(f"order by {name:10s}: " + " < ".join(n.replace("dmasking_", "") for n in order))
    print(f"models whose rank changes from fp32 to int8 (user's loops): {result['rank_changes_fp32_to_int8_user']}")
    print(f"targets (>=6 of 7 within 10%, tau >= 0.9): {'met' if result['targets']['met'] else 'NOT met'}")
    print(f"{seconds / 60:.1f} min (exports {export_s / 60:.1f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
