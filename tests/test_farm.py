"""The device farm (latency.jobs.farm): workers on stand-in phones and on this CPU sharing one PostgreSQL
table's queue. The workers are real `lut worker` processes; the phones are the adb stand-in (several
serials, one unit slower); the server is a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from latency.estimate.estimator import Estimator
from latency.jobs.farm.ledger import FarmLedger
from latency.jobs.space_fill import corner_specs
from latency.vocab.conditions import Conditions
from latency.vocab.family import blocks_of
from latency.vocab.space import get_space
from lut_db import LutStore
from profilers.protocol import canary_spec
from tests.cli import TINY_SPACE, lut
from tests.test_android import HAS_EXECUTORCH, PIXEL, fake_adb, runner_binary  # noqa: F401  (a fixture)
from tests.test_human_output import check, masked

LUT = [sys.executable, "-m", "latency.cli"]
PHONE = Conditions("pixel", "executorch")
MODELS = [  # two small networks sharing their stem and classifier
    {
        "resolution": 32,
        "blocks": [
            {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
            {"op": "ir_k5", "c_out": 8, "mid": 8},
            {"op": "ir_k3", "c_out": 16, "mid": 32, "stride": 2},
            {"op": "ir_pool_hs", "c_out": 64, "mid": 48},
            {"op": "fc", "c_out": 10},
        ],
    },
    {
        "resolution": 32,
        "blocks": [
            {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
            {"op": "ir_k3", "c_out": 8, "mid": 24},
            {"op": "ir_k5", "c_out": 16, "mid": 32, "stride": 2},
            {"op": "ir_pool_hs", "c_out": 64, "mid": 48},
            {"op": "fc", "c_out": 10},
        ],
    },
]


def program(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20] + ".pte"


def unit(serial: str, **extra: object) -> dict:
    return {**PIXEL, "serial": serial, **extra}


def worker(url: str, *args: str, env: dict | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LUT, "worker", "--heartbeat-s", "1", "--db", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, as a terminal's command is
    )


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args[3:])} did not stop: {err[-3000:]}") from None
    assert proc.returncode == 0, err
    return out, err


def job_states(url: str) -> dict[int, str]:
    with LutStore(url) as store, store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, status::text FROM procrastinate_jobs")).all())


def spans(phones: Path, serial: str) -> list[tuple[float, float]]:
    path = phones / serial / "spans.log"
    return sorted((float(a), float(b)) for a, b, _ in (line.split() for line in path.read_text().splitlines()))


@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (pip install 'lut[executorch]')")
def test_three_phones_share_the_jobs_survive_a_kill_and_agree_after_the_canary(
    fake_adb,  # noqa: F811
    pg_store_url: str,
    tmp_path: Path,
) -> None:
    # unit A is slow and busy for the time it reports (so it is killed mid-job), C is 1.5x slower than B
    fake_adb(unit("UNITA", speed=20.0, sleep=True), unit("UNITB"), unit("UNITC", speed=1.5))
    phones, runner = tmp_path / "phones", str(runner_binary(tmp_path))
    archs = []
    for i, model in enumerate(MODELS):
        archs += ["--arch", str(tmp_path / f"m{i}.json")]
        (tmp_path / f"m{i}.json").write_text(json.dumps(model))
    specs = {s.key: s for m in MODELS for s in blocks_of(m)}
    crash = program(blocks_of(MODELS[1])[2].key)[:20]  # this block aborts the runner on every unit
    queue = ["profile", "--device", "pixel", *archs, "--queue", "--job-size", "2", "--protocol", "quick"]
    queued = json.loads(lut(*queue, "--db", pg_store_url, "--json", check=True).stdout)
    assert queued["queued_blocks"] == len(specs) and len(queued["jobs"]) == -(-len(specs) // 2)
    again = json.loads(lut(*queue, "--db", pg_store_url, "--json", check=True).stdout)
    assert again["queued_blocks"] == 0 and again["already_queued"] == len(specs)  # never queued twice

    env = {"FAKE_RUNNER_CRASH": crash}
    with LutStore(pg_store_url) as store:
        ledger = FarmLedger(store.engine)
        doomed = worker(pg_store_url, "--device", "pixel", "--serial", "UNITA", "--runner", runner, env=env)
        deadline = time.monotonic() + 300
        killed_job = None
        while time.monotonic() < deadline and doomed.poll() is None:
            busy = [w.job_id for w in ledger.workers("pixel") if w.unit == "UNITA" and w.job_id]
            if busy and (phones / "UNITA" / "spans.log").exists():  # mid-job: it has run the phone
                killed_job = busy[0]
                break
            time.sleep(0.05)
        assert killed_job is not None, doomed.communicate(timeout=5)[1]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        assert job_states(pg_store_url)[killed_job] == "doing"  # taken, its worker gone
        drainers = [
            worker(pg_store_url, "--device", "pixel", "--serial", serial, "--runner", runner, "--drain", env=env)
            for serial in ("UNITB", "UNITB", "UNITC")  # two workers on one unit: they take turns
        ]
        outputs = [finish(p) for p in drainers]
        assert any("another worker is measuring on UNITB" in err for _, err in outputs)

        states = job_states(pg_store_url)
        assert states[killed_job] == "succeeded"  # put back in the queue when A's heartbeat lapsed, finished
        assert sorted(states.values()).count("failed") == 1 and "todo" not in states.values()
        rows = store.measurements(PHONE)
        keys = [r.block_key for r in rows]
        crashed = next(k for k in specs if program(k).startswith(crash))
        assert sorted(keys) == sorted(set(specs) - {crashed})  # every block once; the crashing one failed
        status = json.loads(lut("jobs", "--device", "pixel", "--db", pg_store_url, "--json", check=True).stdout)
        (pixel,) = status
        assert pixel["jobs"]["failed"] == 1 and pixel["jobs"]["queued"] == pixel["jobs"]["running"] == 0
        (failure,) = pixel["failures"]
        assert failure["block"] == crashed and "Aborted" in failure["message"]
        retried = lut("jobs", "retry", "--device", "pixel", "--db", pg_store_url, "--json", check=True)
        assert json.loads(retried.stdout)["retried"] == 1 and "todo" in job_states(pg_store_url).values()
        cancelled = lut("jobs", "cancel", "--device", "pixel", "--db", pg_store_url, check=True)
        assert "1 queued job(s) of pixel cancelled" in cancelled.stdout
        assert sorted(job_states(pg_store_url).values()).count("cancelled") == 1

        for serial in ("UNITA", "UNITB", "UNITC"):  # one job at a time on each unit, from the runner's own clock
            ran = spans(phones, serial)
            assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(ran))

        # Each unit's own times, speed-free: a block's run over the canary's run on the same phone.
        by_unit = {r.provenance.environment["serial"]: [] for r in rows}
        for r in rows:
            by_unit[r.provenance.environment["serial"]].append(r)
        assert {"UNITB", "UNITC"} <= set(by_unit)
        ratio = {}
        for serial in by_unit:
            ran = dict(line.split() for line in (phones / serial / "runs.log").read_text().splitlines())
            canary = float(ran[program(canary_spec().key)])
            ratio.update({r.block_key: float(ran[program(r.block_key)]) / canary for r in by_unit[serial]})
        slow, fast = (sum(r.provenance.canary_us for r in by_unit[s]) / len(by_unit[s]) for s in ("UNITC", "UNITB"))
        assert slow / fast == pytest.approx(1.5, rel=0.05)  # the units really differ
        estimator = Estimator(PHONE, store=store, use_calibration=False)
        for r in rows:  # after the canary the table does not depend on which unit took which job
            entry = estimator.entry(specs[r.block_key])
            assert entry.median_us / estimator.table_canary_us == pytest.approx(ratio[r.block_key], rel=0.03)


def test_a_cpu_worker_and_a_phone_worker_drain_their_own_jobs(fake_adb, pg_store_url: str, tmp_path: Path) -> None:  # noqa: F811
    fake_adb(unit("UNITB"))
    model = tmp_path / "m.json"
    model.write_text(json.dumps(MODELS[0]))
    for device in ("cpu", "pixel"):
        lut(
            "profile",
            "--device",
            device,
            "--arch",
            str(model),
            "--queue",
            "--protocol",
            "quick",
            "--db",
            pg_store_url,
            check=True,
        )
    calibration = ["calibrate", "--device", "cpu", "--models", "none", "--random", "2", "--space", str(TINY_SPACE)]
    calibration += ["--protocol", "quick", "--queue", "--db", pg_store_url, "--json"]
    queued = json.loads(lut(*calibration, check=True).stdout)
    assert queued["queued_networks"] == 2 and queued["blocks"]["queued_blocks"] > 0  # the networks and their blocks
    runner = str(runner_binary(tmp_path))
    phone_worker = worker(pg_store_url, "--device", "pixel", "--runner", runner, "--drain", "--json")
    cpu_worker = worker(pg_store_url, "--device", "cpu", "--drain", "--json")
    phone, cpu = (json.loads(finish(p)[0]) for p in (phone_worker, cpu_worker))
    assert phone["unit"] == "UNITB" and cpu["unit"].endswith("/cpu")
    assert phone["measured"] == len(blocks_of(MODELS[0]))
    assert cpu["measured"] == len(blocks_of(MODELS[0])) + queued["blocks"]["queued_blocks"] + 2
    again = json.loads(lut(*calibration, check=True).stdout)  # `lut calibrate` without --queue now fits on these
    assert again["already_present"] == 2 and again["queued_networks"] == again["blocks"]["queued_blocks"] == 0
    with LutStore(pg_store_url) as store:
        assert {r.conditions.backend for r in store.measurements(Conditions("cpu"))} == {"torch"}
        assert len(store.measurements(PHONE)) == len(blocks_of(MODELS[0]))
        present = store.measured_keys(Conditions("cpu", "torch"))
    corners = {s.key for s in corner_specs(get_space(str(TINY_SPACE)))}
    space = lut("profile", "--space", str(TINY_SPACE), "--queue", "--db", pg_store_url, "--json", check=True)
    assert json.loads(space.stdout)["queued_blocks"] == len(corners - present)  # a space: its corners


def test_a_farm_needs_a_shared_table(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    for args in (["worker", "--device", "cpu"], ["profile", "--models", "dmasking_f1", "--queue"]):
        ran = lut(*args, "--db", db)
        assert ran.returncode == 2 and "needs one table that every host reaches" in ran.stderr
        assert "postgresql+psycopg://" in ran.stderr and "Traceback" not in ran.stderr


def test_ctrl_c_lets_the_job_at_hand_finish(pg_store_url: str, tmp_path: Path) -> None:
    model = tmp_path / "m.json"
    model.write_text(json.dumps(MODELS[0]))
    lut("profile", "--arch", str(model), "--queue", "--protocol", "quick", "--db", pg_store_url, check=True)
    proc = worker(pg_store_url, "--device", "cpu", "--json")
    with LutStore(pg_store_url) as store:
        ledger = FarmLedger(store.engine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(w.job_id for w in ledger.workers("cpu")):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: to the whole process group
        summary = json.loads(finish(proc)[0])
        assert summary["jobs_done"] == 1 and summary["jobs_failed"] == 0
        assert set(job_states(pg_store_url).values()) == {"succeeded"}
        assert len(store.measurements(Conditions("cpu"))) == len(blocks_of(MODELS[0]))
        assert ledger.workers("cpu") == []  # it signed off


def job_attempts(url: str) -> dict[int, int]:
    with LutStore(url) as store, store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, attempts FROM procrastinate_jobs")).all())


def test_a_worker_runs_only_the_deployment_environments_its_owner_allows(pg_store_url: str, tmp_path: Path) -> None:
    site, marker = tmp_path / "site", tmp_path / "marker"
    site.mkdir()  # a module any Python process on PYTHONPATH runs at start: code a queued job would carry
    (site / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")
    env_text = f"PYTHONPATH={site}"
    calibration = ["calibrate", "--device", "cpu", "--models", "none", "--random", "1", "--space", str(TINY_SPACE)]
    calibration += ["--protocol", "quick", "--queue", "--deploy-env", env_text, "--db", pg_store_url, "--json"]
    queued = json.loads(lut(*calibration, check=True).stdout)
    assert queued["queued_networks"] == 1 and queued["blocks"]["queued_blocks"] > 0
    (network_job,) = queued["jobs"]
    model = tmp_path / "m.json"  # a job queued after it: the worker goes on with it
    model.write_text(json.dumps(MODELS[0]))
    after = ["profile", "--arch", str(model), "--queue", "--protocol", "quick", "--db", pg_store_url, "--json"]
    later = json.loads(lut(*after, check=True).stdout)
    assert later["jobs"] and min(later["jobs"]) > network_job
    block_jobs = len(queued["blocks"]["jobs"]) + len(later["jobs"])

    summary = json.loads(finish(worker(pg_store_url, "--device", "cpu", "--drain", "--json"))[0])
    assert summary["jobs_failed"] == 1 and summary["jobs_done"] == block_jobs
    assert not marker.exists()  # the module never ran
    assert job_states(pg_store_url)[network_job] == "failed" and job_attempts(pg_store_url)[network_job] == 1
    sentence = (
        f"this worker does not allow the deployment environment '{env_text}'; start it with "
        f"--allow-deploy-env '{env_text}' to measure it"
    )
    (cpu,) = json.loads(lut("jobs", "--device", "cpu", "--db", pg_store_url, "--json", check=True).stdout)
    assert cpu["failures"] == [{"job": network_job, "block": "(the job)", "unit": summary["unit"], "message": sentence}]
    shown = lut("jobs", "--db", pg_store_url, check=True).stdout
    assert sentence in shown
    check("jobs", masked(shown.replace(socket.gethostname(), "HOST"), site))  # lut jobs as a reader sees it
    with LutStore(pg_store_url) as store:
        assert store.e2e_runs(Conditions("cpu", "torch"), tag="calibration", deploy_env=env_text) == []
        assert store.measured_keys(Conditions("cpu", "torch")) >= {s.key for s in blocks_of(MODELS[0])}

    lut("jobs", "retry", "--device", "cpu", "--db", pg_store_url, check=True)
    allowed = worker(pg_store_url, "--device", "cpu", "--drain", "--json", env={"LUT_ALLOW_DEPLOY_ENV": env_text})
    summary = json.loads(finish(allowed)[0])
    assert summary["jobs_done"] == 1 and summary["jobs_failed"] == 0 and summary["measured"] == 1
    plain = worker(pg_store_url, "--device", "cpu", "--drain")  # nothing left: its human summary
    check("worker", masked(finish(plain)[0].replace(socket.gethostname(), "HOST")))
    assert marker.exists()  # its owner allowed it: the network ran in that environment
    with LutStore(pg_store_url) as store:
        (run,) = store.e2e_runs(Conditions("cpu", "torch"), tag="calibration", deploy_env=env_text)
        assert run.deploy_env == env_text


def test_malformed_jobs_written_straight_into_the_queue_fail_once_with_their_reason(pg_store_url: str) -> None:
    import procrastinate
    from sqlalchemy.engine import make_url

    from latency.jobs.farm import TASK_NAME

    lut("jobs", "--db", pg_store_url, check=True)  # the queue's tables
    conditions = {"device": "cpu", "backend": "torch", "threads": 1, "batch": 1, "dtype": "fp32", "protocol": "quick"}
    key = blocks_of(MODELS[0])[1].key
    runs = {**conditions, "tag": "calibration", "deploy_env": "default"}
    malformed = [
        ({**conditions, "keys": [key], "runner": "/bin/sh"}, "the job holds 'runner', which no job lut queues holds"),
        ({**conditions, "keys": ["ir_k3_rm_-rf"]}, "'ir_k3_rm_-rf' is not a block key"),
        ({**conditions, "keys": 7}, "'keys' must be a non-empty list, got 7"),
        ({**runs, "archs": ["x" * 10_000_000]}, "an item of 'archs' is 10000000 characters long"),
        ({**conditions, "device": "pixel", "keys": [key]}, "the job is for device 'pixel'"),
    ]
    conninfo = make_url(pg_store_url).set(drivername="postgresql").render_as_string(hide_password=False)
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=conninfo))
    with app.open():
        task = app.configure_task(TASK_NAME, queue="lut:cpu")
        ids = [task.defer(**args) for args, _ in malformed]
        good = task.defer(**conditions, keys=[key])  # after them: the worker goes on
    assert "queued" in lut("jobs", "--db", pg_store_url, check=True).stdout  # malformed jobs trip nothing

    summary = json.loads(finish(worker(pg_store_url, "--device", "cpu", "--drain", "--json"))[0])
    assert summary["jobs_failed"] == len(malformed) and summary["jobs_done"] == 1 and summary["measured"] == 1
    states, attempts = job_states(pg_store_url), job_attempts(pg_store_url)
    assert [states[i] for i in ids] == ["failed"] * len(malformed) and states[good] == "succeeded"
    assert [attempts[i] for i in ids] == [1] * len(malformed)  # once each, never retried
    (cpu,) = json.loads(lut("jobs", "--device", "cpu", "--db", pg_store_url, "--json", check=True).stdout)
    message = {f["job"]: f["message"] for f in cpu["failures"]}
    for job_id, (_, reason) in zip(ids, malformed, strict=True):
        assert reason in message[job_id] and len(message[job_id]) < 400
    with LutStore(pg_store_url) as store:
        assert store.measured_keys(Conditions("cpu", "torch")) == {key}


def test_retry_and_cancel_on_an_empty_queue_or_a_device_without_jobs(pg_store_url: str) -> None:
    for command, word in (("retry", "queued again"), ("cancel", "cancelled")):
        for device in ("cpu", "galaxy-s99"):  # an empty queue; a device no job was ever queued for
            ran = lut("jobs", command, "--device", device, "--db", pg_store_url, check=True)
            assert f"0 {'failed' if command == 'retry' else 'queued'} job(s) of {device} {word}" in ran.stdout
        bad = lut("jobs", command, "--device", "tpu/0", "--db", pg_store_url)
        assert bad.returncode == 2 and "'tpu/0' is not a device name" in bad.stderr and "Traceback" not in bad.stderr
    shown = json.loads(lut("jobs", "--device", "galaxy-s99", "--db", pg_store_url, "--json", check=True).stdout)
    assert [(d["device"], sum(d["jobs"].values()), d["workers"]) for d in shown] == [("galaxy-s99", 0, [])]
