"""Do lut's estimates match what a user measures? Each estimate against a user's own loop.

For the FBNetV2 family and sampled architectures never used for calibration: the uncalibrated
estimate (the plain block sum), the estimate calibrated on sampled architectures only, lut's
end-to-end run (`lut time`'s path) and a user's loop in a fresh process with the default environment
(USER_LOOPS below: the few lines a user writes), `--user-loops` (2) per architecture around lut's run.
Within 10%, RMSPE, median signed error and Kendall tau of each against the median of the user's loops, each
estimate stated plainly (what a user sees) and, beside it, at the machine's speed during that
architecture's lut run (its canary); the calibrated estimate's interval coverage (the share of user
loops inside it); the user loops' own repeatability; the calibration's fit on its own runs.

    python bench/reference_check.py [--backend torch] [--deploy-env default] [--db FILE] [--out FILE.json]

`--blocks space` fills the table the way the search does (`lut profile --space`, for each space the
checked architectures come from, `--space-budget-min` each): with torch, shapes timed inside networks of
the space; elsewhere alone; the rest predicted. Blocks of the family outside every space are predicted
from the table (as a phone's missing blocks are). `--blocks in-context` (torch) times the blocks inside
whole networks run in the deployment's environment (`lut profile --in-context`): the calibration set, the
family, and networks sampled (seed 2) to cover the other checked architectures' blocks, never those
architectures themselves; the blocks no such network holds are timed alone. `--blocks isolated` (the
default) times every block alone. `--isolated-db FILE` adds the plain sum of isolated blocks from another
table (measuring what it lacks), so that both sums meet the same user loops.

Beside the calibration lut makes (runs as measured), the bench refits the same runs the way lut did
before (each run brought to the table's speed by its canary over the table's): `calibrated_rescaled_ms`,
the A/B of that drift correction against the user's loop.

`--deploy-env tuned-malloc` reproduces how lut calibrated before (end-to-end runs in its tuned
block workers), against the same user loops. The table is kept (`--db`): a second run measures only
what is missing, except the reference runs and user loops, taken afresh every time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from latency.estimate.correction import block_features
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import Sample, at_run_speed, error_metrics, fit_correction, samples_from_runs
from latency.jobs.calibrate import calibrate
from latency.jobs.cover import predict_missing
from latency.jobs.in_context import profile_in_context
from latency.jobs.measure import latest_run, profile_archs, profile_blocks
from latency.jobs.space_fill import profile_space
from latency.vocab.arch import Arch, covering
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.family import family_archs
from latency.vocab.space import get_space
from lut_db import LutStore

RESULTS = Path(__file__).parent / "results"
TAG = "reference-check"

# What a user writes to time a network, per runtime: build it, set the threads, warm up for a
# second, take the median of 100 calls. argv: ARTIFACT THREADS; prints milliseconds.
USER_LOOPS = {
    "torch": """
import statistics, sys, time, torch
from latency.nn.fbnet import fbnetv2
model = fbnetv2(sys.argv[1]).eval()
torch.set_num_threads(int(sys.argv[2]))
x = torch.randn(1, 3, model.arch.resolution, model.arch.resolution)
with torch.inference_mode():
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        model(x)
    times = []
    for _ in range(100):
        t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e3)
""",
    "executorch": """
import statistics, sys, time, torch
from executorch.runtime import Runtime
from executorch.extension.pybindings import portable_lib
portable_lib._unsafe_reset_threadpool(int(sys.argv[2]))
program = Runtime.get().load_program(sys.argv[1])
method = program.load_method("forward")
shape = method.metadata.input_tensor_meta(0).sizes()
inputs = [torch.randn(*shape)]
end = time.perf_counter() + 1.0
while time.perf_counter() < end:
    method.execute(inputs)
times = []
for _ in range(100):
    t0 = time.perf_counter(); method.execute(inputs); times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e3)
""",
    "onnxruntime": """
import statistics, sys, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
meta = session.get_inputs()[0]
feed = {meta.name: np.random.randn(*meta.shape).astype(np.float32)}
end = time.perf_counter() + 1.0
while time.perf_counter() < end:
    session.run(None, feed)
times = []
for _ in range(100):
    t0 = time.perf_counter(); session.run(None, feed); times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e3)
""",
}


def artifact(arch: Arch, backend: str, folder: Path) -> Path:
    """What the user's loop loads: the ARCH.json for torch, the exported program for the others."""
    path = folder / f"{arch.name}.json"
    path.write_text(arch.to_json())
    if backend == "torch":
        return path
    from profilers.targets import ArchTarget

    if backend == "executorch":
        from profilers.backends.executorch_cpu import export_program

        out, data = folder / f"{arch.name}.pte", export_program(ArchTarget(arch))
    else:
        from profilers.backends.onnxruntime_cpu import export_onnx

        out, data = folder / f"{arch.name}.onnx", export_onnx(ArchTarget(arch))
    out.write_bytes(data)
    return out


def user_loop_ms(backend: str, path: Path, threads: int) -> float:
    """The user's loop in a fresh process with the default environment."""
    result = subprocess.run(
        [sys.executable, "-c", USER_LOOPS[backend], str(path), str(threads)],
        env=DEFAULT.process_env(os.environ),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def sampled(n: int, seed: int) -> list[Arch]:
    """n architectures from the spaces around f4, f1 and l1 (half, a quarter, a quarter)."""
    counts = {"fbnetv2_f4": n - 2 * (n // 4), "fbnetv2_f1": n // 4, "fbnetv2_l1": n // 4}
    return [arch for name, k in counts.items() if k for arch in get_space(name).sampled_archs(k, seed)]


def context_networks(calibration_set: list[Arch], check_set: list[Arch], family: list[Arch], pool: int) -> list[Arch]:
    """The networks whose blocks are timed in context: the calibration set and the family (what a user
    profiles), then sampled networks (seed 2, none checked) covering the checked sampled ones' blocks."""
    chosen = calibration_set + family
    held = {s.key for a in chosen for s in a.specs()}
    wanted = {s.key for a in check_set for s in a.specs()} - held
    checked = {a.layers for a in check_set}
    candidates = [a for a in sampled(pool, seed=2) if a.layers not in checked]
    return chosen + covering(candidates, wanted)


def _metrics(rows: list[dict[str, Any]], column: str) -> dict[str, Any]:
    return error_metrics(np.array([r[column] for r in rows]), np.array([r["user_ms"] for r in rows]))


SPACES = ("fbnetv2_f4", "fbnetv2_f1", "fbnetv2_l1")  # where `sampled` draws from


def fill_table(args: argparse.Namespace, store: LutStore, common: dict[str, Any], env: DeployEnv, sets: Any) -> dict:
    """Fill the table as `--blocks` says; what it did, for the JSON."""
    calibration_set, check_set, family = sets
    specs = list({s.key: s for a in calibration_set + check_set for s in a.specs()}.values())
    context: dict[str, Any] = {}
    if args.blocks == "space":
        for name in SPACES:
            filled = profile_space(
                get_space(name), store, **common, budget_min=args.space_budget_min, deploy_env=env
            ).to_dict()
            context[name] = {k: filled[k] for k in ("grid", "measured_now", "predicted", "networks", "in_context")}
            context[name]["minutes"] = round(filled["seconds"] / 60, 1)
            print(f"{name}: {context[name]}", flush=True)
        return context
    if args.blocks == "in-context":
        networks = context_networks(calibration_set, check_set, family, args.pool)
        timed = profile_in_context(networks, store, **common, deploy_env=env)
        held = {s.key for a in networks for s in a.specs()}
        context = {
            "networks": len(networks),
            "blocks_in_context": len(held),
            "checked_blocks_alone": sum(s.key not in held for s in specs),
            "minutes": round(timed.seconds / 60, 1),
        }
        print(f"in context: {context}", flush=True)
    blocks = profile_blocks(specs, store, **common)
    print(f"blocks: {blocks.measured} measured, {blocks.already_present} already in the table", flush=True)
    return context


def rescaled_fit(store: LutStore, plain: Estimator, conditions: Conditions, env: DeployEnv) -> Any:
    """The calibration runs fitted the way lut did before: each brought to the table's speed by its canary
    over the table's (the drift correction whose A/B this bench shows)."""
    runs = store.e2e_runs(conditions, tag="calibration", deploy_env=env.name)
    samples = [
        Sample(s.name, s.features, s.measured_ms * plain.table_canary_us / r.provenance.canary_us)
        if r.provenance.canary_us and plain.table_canary_us
        else s
        for r, s in zip(runs, samples_from_runs(runs, plain), strict=True)  # every run's blocks are present
    ]
    return fit_correction(samples, plain.table_canary_us)


def estimate_with(correction: Any, estimator: Estimator, arch: Arch) -> float:
    """`arch`'s estimate under another correction over the same table."""
    specs = arch.specs()
    features = np.stack(
        [block_features(s, estimator.entry(s).median_us / 1e3, estimator.entry(s).context) for s in specs]
    )
    return float(correction.block_ms(features).sum() + correction.intercept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", choices=sorted(USER_LOOPS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deploy-env", default="default", help="where lut's end-to-end runs are taken")
    parser.add_argument("--calibration", type=int, default=20, help="sampled architectures to calibrate on")
    parser.add_argument("--validation", type=int, default=20, help="sampled architectures to check (and the family)")
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--blocks", default="isolated", choices=("isolated", "in-context", "space"))
    parser.add_argument("--space-budget-min", type=float, default=15.0, help="--blocks space: minutes per space")
    parser.add_argument("--pool", type=int, default=400, help="sampled networks to pick context networks from")
    parser.add_argument(
        "--user-loops", type=int, default=2, help="a user's loops per network, fresh processes around lut's run"
    )
    parser.add_argument("--isolated-db", default=None, help="a table of isolated blocks, for their plain sum")
    parser.add_argument("--db", default=str(RESULTS / "reference_check.sqlite"))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="[default: results/reference_check-BACKEND-ENV-BLOCKS.json]",
    )
    args = parser.parse_args()
    env = DeployEnv.parse(args.deploy_env)
    out = args.out or RESULTS / f"reference_check-{args.backend}-{env.name}-{args.blocks}.json"

    calibration_set = sampled(args.calibration, seed=0)
    family = family_archs(["all"])
    family_names = {a.name for a in family}
    check_set = family + sampled(args.validation, seed=1)
    seen = {a.layers for a in calibration_set}
    check_set = [a for a in check_set if a.layers not in seen]
    conditions = Conditions("cpu", args.backend, args.threads)
    common: dict[str, Any] = dict(conditions=conditions, protocol=args.protocol)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LutStore(args.db) as store, tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        context = fill_table(args, store, common, env, (calibration_set, check_set, family))
        isolated = None
        if args.isolated_db:
            isolated_store = stack.enter_context(LutStore(args.isolated_db))
            profile_blocks(list({s.key: s for a in check_set for s in a.specs()}.values()), isolated_store, **common)
            isolated = Estimator(conditions, store=isolated_store, use_calibration=False)
        report = calibrate(store, calibration_set, **common, deploy_env=env)
        print(f"calibrated on {report.runs} sampled architectures: {report.correction.variant} correction", flush=True)
        plain = Estimator(conditions, store=store, use_calibration=False)
        calibrated = Estimator(conditions, store=store, deploy_env=env.name)
        predicted = {}
        for estimator in (plain, calibrated):  # blocks outside every space: predicted, as a phone's are
            missing = list({s.key: s for a in check_set for s in estimator.missing(a)}.values())
            if missing:
                predict_missing(estimator, missing)
                predicted = {a.name: len({s.key for s in a.specs()} & {s.key for s in missing}) for a in check_set}
        rescaled = rescaled_fit(store, plain, conditions, env)
        # the rescaled fit's estimates of the very runs it was fitted on, against those runs as measured
        calibration_runs = store.e2e_runs(conditions, tag="calibration", deploy_env=env.name)
        rescaled_in_sample = float(
            np.median([estimate_with(rescaled, plain, r.arch) / (r.stats.median_us / 1e3) for r in calibration_runs])
        )
        rows = []
        for arch in check_set:
            path = artifact(arch, args.backend, Path(folder))
            before = [user_loop_ms(args.backend, path, args.threads) for _ in range((args.user_loops + 1) // 2)]
            profile_archs([arch], store, **common, tag=TAG, force=True, deploy_env=env)
            after = [user_loop_ms(args.backend, path, args.threads) for _ in range(args.user_loops // 2)]
            run = latest_run(store.e2e_runs(conditions, tag=TAG, deploy_env=env.name), arch)
            uncal, cal = plain.estimate(arch), calibrated.estimate(arch)
            row = {
                "name": arch.name,
                "family": arch.name in family_names,
                "predicted_blocks": predicted.get(arch.name, 0),
                "user_ms": statistics.median(before + after),
                "user_runs_ms": before + after,
                "lut_run_ms": run.stats.median_us / 1e3,
                "canary_us": run.provenance.canary_us,
                "uncalibrated_ms": uncal.latency_ms,
                "calibrated_ms": cal.latency_ms,
                "calibrated_interval_ms": list(cal.interval_ms),
                "calibrated_rescaled_ms": estimate_with(rescaled, plain, arch),
                "uncalibrated_then_ms": at_run_speed(uncal.latency_ms, run, plain.table_canary_us),
                "calibrated_then_ms": at_run_speed(cal.latency_ms, run, calibrated.table_canary_us),
            }
            row["sum_over_user"] = uncal.latency_ms / row["user_ms"]
            if isolated is not None:
                row["isolated_uncalibrated_ms"] = isolated.estimate(arch).latency_ms
                row["isolated_sum_over_user"] = row["isolated_uncalibrated_ms"] / row["user_ms"]
            rows.append(row)
            print(
                f"  {arch.name:28s} user {row['user_ms']:8.3f} ms  lut run {row['lut_run_ms']:8.3f}  "
                f"uncalibrated {uncal.latency_ms:8.3f}  calibrated {cal.latency_ms:8.3f}",
                flush=True,
            )
    seconds = time.monotonic() - started
    columns = (
        "uncalibrated_ms",
        "calibrated_ms",
        "calibrated_rescaled_ms",
        "lut_run_ms",
        "uncalibrated_then_ms",
        "calibrated_then_ms",
    )
    if isolated is not None:
        columns = ("isolated_uncalibrated_ms", *columns)
    family_rows = [r for r in rows if r["family"]]
    sampled_rows = [r for r in rows if not r["family"]]
    canaries = [r["canary_us"] for r in rows if r["canary_us"]]
    gaps = [
        abs(a - b) / ((a + b) / 2)
        for r in rows
        for i, a in enumerate(r["user_runs_ms"])
        for b in r["user_runs_ms"][i + 1 :]
    ]
    inside = [low <= r["user_ms"] <= high for r in rows for low, high in [r["calibrated_interval_ms"]]]
    inside_single = [
        low <= u <= high for r in rows for low, high in [r["calibrated_interval_ms"]] for u in r["user_runs_ms"]
    ]
    result = {
        "machine": "this host's CPU",
        "backend": args.backend,
        "threads": args.threads,
        "deploy_env": env.name,
        "blocks": args.blocks,
        "table": context,
        "calibration_runs": report.runs,
        "correction": report.correction.variant,
        "calibration_cv_rmspe": report.correction.metrics.get("cv_rmspe"),
        "calibration_in_sample_median_ratio": report.correction.metrics.get("in_sample_median_ratio"),
        "rescaled_in_sample_median_ratio": rescaled_in_sample,
        "table_canary_us": plain.table_canary_us,
        "canary_range_us": [min(canaries), max(canaries)] if canaries else None,
        "user_loop_repeatability": {
            "gap_median": float(np.median(gaps)),
            "gap_max": float(np.max(gaps)),
            "within_10pct": float(np.mean(np.array(gaps) <= 0.10)),
        },
        "calibrated_interval_coverage": {
            "user_mean": float(np.mean(inside)),
            "single_loop": float(np.mean(inside_single)),
        },
        "all": {c: _metrics(rows, c) for c in columns},
        "family": {c: _metrics(family_rows, c) for c in columns},
        "sampled": {c: _metrics(sampled_rows, c) for c in columns},
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    print(f"\nagainst a user's loop ({args.backend}, {args.threads} thread(s), lut runs in '{env.name}'):")
    print(f"{'estimate':24s}{'set':>8s}{'n':>4s}{'within 10%':>12s}{'RMSPE':>8s}{'tau':>7s}{'median err':>12s}")
    for subset in ("family", "sampled", "all"):
        for column in columns:
            m = result[subset][column]
            tau = float("nan") if m["kendall_tau"] is None else m["kendall_tau"]
            print(
                f"{column:24s}{subset:>8s}{m['n']:>4d}{m['within_10pct']:>12.0%}{m['rmspe']:>8.1%}"
                f"{tau:>7.3f}{m['median_error']:>+12.1%}"
            )
    print(
        "\nsum of blocks over the user's time, family: "
        + ", ".join(f"{r['name']} {r['sum_over_user']:.2f}" for r in family_rows)
    )
    ratios = [r["sum_over_user"] for r in rows]
    print(f"all {len(rows)}: median {np.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f}")
    if isolated is not None:
        ratios = [r["isolated_sum_over_user"] for r in rows]
        print(
            f"isolated blocks' sum over the user's time, all: median {np.median(ratios):.2f}, "
            f"{min(ratios):.2f}-{max(ratios):.2f}"
        )
    repeat = result["user_loop_repeatability"]
    print(
        f"user loops, {args.user_loops} per network: two of them apart by {repeat['gap_median']:.1%} in the "
        f"median, {repeat['gap_max']:.1%} at most, within 10% of each other for {repeat['within_10pct']:.0%}"
    )
    coverage = result["calibrated_interval_coverage"]
    print(
        f"calibrated interval holds the user's mean for {coverage['user_mean']:.0%}, single loops "
        f"{coverage['single_loop']:.0%}; calibration on its own runs: estimate/measured median "
        f"{result['calibration_in_sample_median_ratio']:.3f} (the rescaled fit: "
        f"{result['rescaled_in_sample_median_ratio']:.3f})"
    )
    if canaries:
        print(f"canary during the runs: {min(canaries):.0f}-{max(canaries):.0f} us (table {plain.table_canary_us:.0f})")
    print(f"{seconds / 60:.1f} min")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
