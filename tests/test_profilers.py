"""Profilers: statistics, the protocol's scheduling, and real worker processes."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from latency.vocab.blocks import BlockSpec
from latency.vocab.family import blocks_of
from profilers.backends import backend_class
from profilers.devices import resolve_device
from profilers.errors import BlockFailed, ProfilerError
from profilers.protocol import PROTOCOLS, Protocol, Scheduler, canary_spec
from profilers.stats import median_ci_halfwidth, relative_spread, summarize
from profilers.worker import MALLOC_ENV, Timing, TimingPlan, Worker, WorkerCrashed, WorkerPool

QUICK = PROTOCOLS["quick"]


def test_summarize_gives_robust_statistics() -> None:
    samples = list(range(1, 101))  # 1..100 us
    stats = summarize(samples)
    assert stats.median_us == 50.5 and stats.min_us == 1 and stats.n == 100
    assert stats.p10_us == pytest.approx(10.9) and stats.p90_us == pytest.approx(90.1)
    assert stats.iqr_us == pytest.approx(49.5)
    assert stats.mean_us == 50.5 and stats.std_us == pytest.approx(np.std(samples, ddof=1))


def test_median_ci_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(100, 10, 50), rng.normal(100, 10, 5000)
    assert math.isinf(median_ci_halfwidth([1.0, 2.0]))
    assert median_ci_halfwidth(large) < median_ci_halfwidth(small) < 0.1
    assert median_ci_halfwidth(large) < 0.01
    assert relative_spread([100, 104, 98]) == pytest.approx(0.06)


class ScriptedWorker:
    """Stands in for the worker process only: returns scripted per-call times and logs the calls."""

    def __init__(self, times_us: dict[str, list[float]], failing: set[str] = frozenset(), crash_on: str | None = None):
        self.times_us = times_us
        self.failing = failing
        self.crash_on = crash_on
        self.calls: list[tuple[str, TimingPlan]] = []
        self.visits: dict[str, int] = {}
        self.restarts = 0
        self.forgotten: list[str] = []

    def measure(self, key: str, plan: TimingPlan) -> Timing:
        self.calls.append((key, plan))
        visit = self.visits.get(key, 0)
        self.visits[key] = visit + 1
        if key == self.crash_on:
            self.crash_on = None
            raise WorkerCrashed("the torch worker died (exit code -11)")
        if key in self.failing:
            raise BlockFailed("ONNX export failed: unsupported op")
        base = self.times_us.get(key, [100.0])
        value = base[visit % len(base)]
        return Timing(samples_us=[value] * max(plan.min_runs, 8), warmup_runs=plan.warmup_runs)

    def forget(self, keys: list[str]) -> None:
        self.forgotten.extend(keys)

    def restart(self) -> None:
        self.restarts += 1


SPECS = blocks_of("dmasking_f1")[:5]
CANARY = canary_spec().key


def test_trials_are_interleaved_round_robin_with_the_canary_first() -> None:
    protocol = Protocol(group_size=12)
    worker = ScriptedWorker({})
    results = list(Scheduler(worker, protocol).run(SPECS))
    keys = [k for k, _ in worker.calls]
    per_trial = len(SPECS) + 1
    assert len(keys) == protocol.trials * per_trial
    for trial in range(protocol.trials):
        chunk = keys[trial * per_trial : (trial + 1) * per_trial]
        assert chunk[0] == CANARY
        assert sorted(chunk[1:]) == sorted(s.key for s in SPECS)  # every block once per trial
    # The first visit in a process warms up, later visits there re-warm briefly.
    first_plans = [plan for key, plan in worker.calls[:per_trial] if key != CANARY]
    later_plans = [plan for key, plan in worker.calls[per_trial:] if key != CANARY]
    assert {(p.warmup_runs, p.warmup_s) for p in first_plans} == {(10, protocol.warmup_s / protocol.launches)}
    assert {p.warmup_s for p in later_plans} == {protocol.rewarm_s}
    assert all(r.ok and r.stable and len(r.trial_medians_us) == 3 for r in results)
    assert [r.target for r in results] == SPECS
    assert sorted(worker.forgotten) == sorted(s.key for s in SPECS)


def test_trials_run_in_independent_processes() -> None:
    protocol = Protocol()
    workers = [ScriptedWorker({SPECS[0].key: [100.0 + 2 * i]}) for i in range(protocol.launches)]
    result = next(iter(Scheduler(workers, protocol).run([SPECS[0]])))
    for worker in workers:  # one trial each, canary first, every visit a first visit there
        assert [key for key, _ in worker.calls] == [CANARY, SPECS[0].key]
        assert worker.calls[1][1].warmup_runs == 10
    assert result.trial_medians_us == (100.0, 102.0, 104.0) and result.stable
    assert result.stats.median_us == 102.0  # the median of the processes' medians


def test_plans_add_up_to_the_protocol_budget() -> None:
    protocol = PROTOCOLS["standard"]
    plans = [protocol.trial_plan(first_visit=True) for _ in range(protocol.trials)]
    assert sum(p.min_runs for p in plans) >= protocol.min_runs
    assert sum(p.min_time_s for p in plans) == pytest.approx(protocol.min_time_s)
    assert all(p.warmup_runs >= 10 for p in plans)
    assert sum(p.warmup_s for p in plans) == pytest.approx(protocol.warmup_s)


def test_canary_ratio_cancels_machine_drift() -> None:
    # The whole machine gets 20% slower in trial 2: the block and the canary alike.
    block = SPECS[1].key
    worker = ScriptedWorker({block: [200.0, 240.0, 200.0], CANARY: [100.0, 120.0, 100.0]})
    result = next(r for r in Scheduler(worker, Protocol()).run([SPECS[1]]))
    assert result.details["trial_spread"] == pytest.approx(0.2)
    assert result.canary_ratio == pytest.approx(2.0) and result.details["canary_trial_spread"] == 0
    assert result.stable  # drift that the canary explains is not instability
    assert result.canary_us == 100.0


def test_a_group_taken_while_the_machine_moved_is_taken_again() -> None:
    # The canary of the first take's second trial is 60% slower (the machine moved): the group is taken again,
    # and the steady second take is kept, as measured.
    block = SPECS[1].key
    times = {block: [200.0, 330.0, 200.0, 210.0, 210.0, 210.0], CANARY: [100.0, 160.0, 100.0, 101.0, 100.0, 101.0]}
    worker = ScriptedWorker(times)
    result = next(iter(Scheduler(worker, Protocol()).run([SPECS[1]])))
    assert worker.visits[CANARY] == 6 and worker.visits[block] == 6
    assert result.details["takes"] == 2 and result.stats.median_us == 210.0
    assert result.canary_medians_us == (101.0, 100.0, 101.0)


def test_retakes_stop_at_the_protocols_limit_and_keep_the_steadiest_take() -> None:
    block = SPECS[1].key
    # every take moves, the second least
    worker = ScriptedWorker({CANARY: [100.0, 150.0, 100.0, 100.0, 120.0, 100.0, 100.0, 140.0, 100.0]})
    result = next(iter(Scheduler(worker, Protocol(retakes=2)).run([SPECS[1]])))
    assert worker.visits[block] == 9 and result.details["takes"] == 3
    assert result.canary_medians_us == (100.0, 120.0, 100.0)
    steady = ScriptedWorker({CANARY: [100.0, 109.0, 100.0]})  # within the 10% tolerance: one take
    assert next(iter(Scheduler(steady, Protocol()).run([SPECS[1]]))).details["takes"] == 1
    assert steady.visits[block] == 3
    never = ScriptedWorker({CANARY: [100.0, 150.0, 100.0]})
    assert next(iter(Scheduler(never, Protocol(retakes=0)).run([SPECS[1]]))).details["takes"] == 1


def test_a_group_taken_all_in_a_slow_spell_is_taken_again() -> None:
    # The first group sets the usual canary at 100 us; the second holds still at 140 us throughout (the
    # machine in a slow spell): its trials agree, but it is off the usual speed, and taken again.
    worker = ScriptedWorker({CANARY: [100.0] * 3 + [140.0] * 3 + [101.0] * 3})
    first, second = Scheduler(worker, Protocol(group_size=1)).run(SPECS[:2])
    assert first.details["takes"] == 1 and second.details["takes"] == 2
    assert second.canary_medians_us == (101.0, 101.0, 101.0)
    assert second.details["canary_moved"] == pytest.approx(0.01)


def test_the_canary_warms_up_in_full_at_every_visit() -> None:
    worker = ScriptedWorker({})
    list(Scheduler(worker, Protocol(group_size=2)).run(SPECS))
    plans = [plan for key, plan in worker.calls if key == CANARY]
    assert len(plans) == 3 * 3 and {(p.warmup_runs, p.warmup_s) for p in plans} == {(10, Protocol().warmup_s / 2)}


def test_unstable_blocks_are_remeasured_then_flagged() -> None:
    noisy, steady = SPECS[1].key, SPECS[2].key
    worker = ScriptedWorker({noisy: [100.0, 130.0, 90.0], CANARY: [50.0]})
    results = {r.target.key: r for r in Scheduler(worker, Protocol()).run([SPECS[1], SPECS[2]])}
    assert worker.visits[noisy] == 6 and worker.visits[steady] == 3  # one re-measurement round
    assert not results[noisy].stable and results[noisy].remeasured
    assert results[noisy].details["takes"] == results[steady].details["takes"] == 1  # kept through re-measurement
    assert results[steady].stable and not results[steady].remeasured


def test_a_failing_block_does_not_stop_the_others() -> None:
    worker = ScriptedWorker({}, failing={SPECS[2].key})
    results = list(Scheduler(worker, Protocol()).run(SPECS))
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert "unsupported op" in results[2].error
    assert worker.visits[SPECS[2].key] == 1  # not retried in later trials


def test_a_crashing_worker_is_restarted_and_the_block_reported() -> None:
    worker = ScriptedWorker({}, crash_on=SPECS[3].key)
    results = list(Scheduler(worker, Protocol()).run(SPECS))
    assert worker.restarts == 1
    assert not results[3].ok and "exit code -11" in results[3].error
    assert all(r.ok for i, r in enumerate(results) if i != 3)


def test_groups_bound_what_a_kill_can_lose() -> None:
    worker = ScriptedWorker({})
    protocol = Protocol(group_size=2)
    order = []
    for result in Scheduler(worker, protocol).run(SPECS):
        order.append((result.target.key, len(worker.calls)))
    # The first group's results come out before the second group is touched.
    assert order[0][1] == order[1][1] == protocol.trials * 3


# ---- real worker processes -------------------------------------------------------------------

F1 = blocks_of("dmasking_f1")
SMALL = [F1[1], *[s for s in F1 if s.kind in ("skip", "classifier")][:2]]


def test_a_torch_worker_measures_real_blocks_refuses_bad_ones_and_is_restarted_after_a_kill() -> None:
    # Forked from the zygote: a fresh interpreter imports torch (one to two minutes on a slow CI machine);
    # the fresh start has its own test (onnxruntime's worker, below).
    plan = QUICK.trial_plan(first_visit=True)
    with Worker("torch", threads=1, preloaded=True) as worker:
        assert worker.info["backend_version"].startswith("2.13")
        assert worker.info["environment"]["torch_threads"] == 1
        results = list(Scheduler(worker, QUICK).run(SMALL))
        with pytest.raises(BlockFailed):
            worker.measure("not_a_key", plan)
        assert worker.measure(SMALL[0].key, plan).samples_us  # the worker lives on
        os.kill(worker.info["pid"], signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="worker died"):
            worker.measure(SMALL[0].key, plan)
        worker.restart()
        assert worker.measure(SMALL[0].key, plan).samples_us
    assert all(r.ok and r.stats.median_us > 0 and r.stats.n >= QUICK.min_runs for r in results)
    assert all(r.canary_ratio is not None and r.canary_ratio > 0 for r in results)


def test_workers_forked_from_one_zygote_run_in_their_own_environment_and_report_their_death() -> None:
    plan = QUICK.trial_plan(first_visit=True)
    with WorkerPool("torch", 1, 2, preloaded=True) as pool:
        first, second = pool.workers
        pids = {w.info["pid"] for w in pool.workers}
        assert len(pids) == 2 and os.getpid() not in pids
        assert all(w.info["environment"]["malloc"] == MALLOC_ENV for w in pool.workers)  # the tuned env
        assert first.measure(SMALL[0].key, plan).samples_us and second.measure(SMALL[0].key, plan).samples_us
        os.kill(first.info["pid"], signal.SIGKILL)
        assert first._process.wait(timeout=120) == -9  # the exit code, read through the zygote
        with pytest.raises(WorkerCrashed, match=r"exit code -9"):
            first.measure(SMALL[0].key, plan)
        assert second.measure(SMALL[0].key, plan).samples_us  # its sibling lives on


def test_a_pool_runs_trials_in_separate_processes_with_a_steady_heap() -> None:
    protocol = replace(QUICK, launches=2)
    with WorkerPool("torch", 1, protocol.launches, preloaded=True) as pool:
        pids = {w.info["pid"] for w in pool.workers}
        assert len(pids) == 2 and os.getpid() not in pids
        for worker in pool.workers:  # the child really runs with the allocator settings
            assert worker.info["environment"]["malloc"] == MALLOC_ENV
        results = list(Scheduler(pool.workers, protocol).run(SMALL))
    assert all(r.ok and len(r.trial_medians_us) == 3 for r in results)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnxruntime_worker_measures_real_blocks() -> None:
    """A fresh interpreter (the standard protocol's workers), started with the protocol's environment."""
    bad = BlockSpec("ir", 8, 16, 8, 3, 1, 0, "relu", 8, 8, dtype="bf16")
    with Worker("onnxruntime", threads=1) as worker:
        assert worker.info["protocol"]["execution_provider"] == "CPUExecutionProvider"
        assert worker.info["environment"]["malloc"] == MALLOC_ENV and worker.info["pid"] != os.getpid()
        results = list(Scheduler(worker, QUICK).run(SMALL))
        with pytest.raises(BlockFailed):  # a block its exporter cannot take
            worker.measure(bad.key, QUICK.trial_plan(first_visit=True))
        assert worker.measure(SMALL[0].key, QUICK.trial_plan(first_visit=True)).samples_us  # lives on
    assert all(r.ok and r.stats.median_us > 0 for r in results)


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")
def test_an_executorch_program_is_exported_once_and_a_damaged_or_swapped_copy_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from profilers.backends import executorch_cpu

    target = SMALL[0]
    path = executorch_cpu.program_path(target)
    path.unlink(missing_ok=True)
    program = executorch_cpu.program_bytes(target)
    assert path.read_bytes() == program and str(path).startswith(os.environ["XDG_CACHE_HOME"])
    exported = executorch_cpu.export_program

    def refuse(_: object) -> bytes:
        raise AssertionError("exported again")

    monkeypatch.setattr(executorch_cpu, "export_program", refuse)
    assert executorch_cpu.program_bytes(target) == program  # every later process reads it
    assert path.with_name(f"{path.name}.sha256").read_text() == hashlib.sha256(program).hexdigest()
    backend = executorch_cpu.ExecuTorchCPU(1)
    backend.setup()
    path.write_bytes(b"not a program")
    monkeypatch.setattr(executorch_cpu, "export_program", exported)
    backend.prepare(target)()  # the damaged copy is replaced, and the block runs
    assert path.read_bytes() == program
    other = executorch_cpu.program_bytes(SMALL[1])  # a valid program, of another block
    assert other != program
    path.write_bytes(other)  # swapped in: it would load and run, and time the wrong block
    exports: list[object] = []
    monkeypatch.setattr(executorch_cpu, "export_program", lambda t: exports.append(t) or exported(t))
    assert executorch_cpu.program_bytes(target) == program and exports == [target]  # exported again
    assert path.read_bytes() == program


def test_missing_onnxruntime_is_reported_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ProfilerError, match=r"needs onnxruntime, which are not installed.*pip install 'lut\[onnx\]'"):
        backend_class("onnxruntime").check_available()


def test_unknown_device_and_backend() -> None:
    with pytest.raises(ProfilerError, match="Unknown backend 'tflite'; known backends: torch, onnxruntime"):
        backend_class("tflite")
    with pytest.raises(ProfilerError, match="'tpu/0' is not a device name"):
        resolve_device("tpu/0")
    with pytest.raises(ProfilerError, match="has no backend"):
        resolve_device("cpu").check_backend("tensorrt")
    phone = resolve_device("galaxy-s24", serial="R58N")  # any other name is a phone, reached lazily
    assert (phone.kind, phone.local, phone.default_backend) == ("android", False, "executorch")
