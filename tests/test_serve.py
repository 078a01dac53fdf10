"""`lut serve`'s API through its ASGI app (httpx's TestClient), against the commands' own answers on the same
table; a real server on a port for the remote estimator and for SIGTERM. The pages in a browser:
tests/test_serve_pages.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from latency.estimate import Estimator
from latency.estimate.fitting import fit_correction, samples_from_runs
from latency.estimate.remote import RemoteEstimator
from latency.serve import create_app
from latency.serve.app import to_json
from latency.vocab.conditions import Conditions
from latency.vocab.errors import LutError
from latency.vocab.family import blocks_of, family_archs, get_arch, list_models
from latency.vocab.space import get_space
from lut_db import FitRecord, LutStore
from search_cost import LatencyCost
from tests.cli import lut
from tests.records import run
from tests.test_estimate import fake_latency_us, fill

CPU = Conditions("cpu", "torch")
MODELS = list_models(available_only=True)
SPACE = get_space("fbnetv2_f1")


def make_table(path: Path) -> str:
    """The family and fbnetv2_f1's grid on this host (made-up times), calibrated on 8 of the space's networks;
    validation runs of four family models; half the family's blocks on a phone."""
    db = str(path)
    with LutStore(db) as store:
        fill(store, [s for m in MODELS for s in blocks_of(m)] + list(SPACE.all_specs()))
        calibration = SPACE.sampled_archs(8, seed=3)
        for arch in calibration:
            store.put_e2e_run(run(arch.name, arch.to_json(), 1.08e3 * sum_ms(arch) + 150, "calibration", CPU))
        estimator = Estimator(CPU, store=store, use_calibration=False)
        correction = fit_correction(samples_from_runs(store.e2e_runs(CPU, tag="calibration"), estimator), None)
        store.put_fit(
            FitRecord(CPU, "2.13.0", "calibration", correction.to_params(), correction.metrics, 8, now(), "default")
        )
        for i, model in enumerate(MODELS[:4]):
            arch = get_arch(model)
            store.put_e2e_run(run(model, arch.to_json(), 1e3 * sum_ms(arch) * (1.05 + 0.02 * i), "validation", CPU))
        phone_specs = [s for m in MODELS for s in blocks_of(m)][::2]
        fill(store, phone_specs, device="pixel", backend="executorch", scale=3.0)
    return db


def sum_ms(arch) -> float:
    return sum(fake_latency_us(s) for s in arch.specs()) / 1e3


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_table(tmp_path_factory.mktemp("serve") / "lut.sqlite")


@pytest.fixture(scope="module")
def client(db: str) -> Iterator[TestClient]:
    with LutStore(db, read_only=True) as store, TestClient(create_app(store)) as c:
        yield c


def cli_json(*args: str) -> object:
    ran = lut(*args, "--json")
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def ok(response) -> object:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("model", "device"), [("dmasking_f3", "cpu"), ("dmasking_l1", "cpu"), ("dmasking_f2", "pixel")]
)
def test_an_estimate_is_the_commands_estimate(client: TestClient, db: str, model: str, device: str) -> None:
    # On the phone half of the blocks are missing: predicted from its measured ones, as the command does.
    expected = cli_json("estimate", model, "--device", device, "--no-profile", "--db", db)
    assert ok(client.get(f"/api/estimate/{model}", params={"device": device})) == expected
    posted = client.post("/api/estimate", params={"device": device}, json=get_arch(model).to_dict())
    assert {k: v for k, v in ok(posted).items() if k != "model"} == {k: v for k, v in expected.items() if k != "model"}
    if device == "cpu":
        assert expected["calibrated"] and expected["latency_ms"] != expected["sum_ms"]
    else:
        assert any(b["source"] == "predicted" for b in expected["blocks"])


def test_many_architectures_in_one_request(client: TestClient, db: str) -> None:
    archs = SPACE.sampled_archs(20, seed=5)
    estimator = Estimator(CPU, db=db)
    many = ok(client.post("/api/estimate/many", json={"archs": [a.to_dict() for a in archs]}))
    assert many["latency_ms"] == pytest.approx(estimator.estimate_many(archs).tolist(), rel=1e-12)
    indices = SPACE.sample_indices(5000, seed=1)
    points = ok(client.post("/api/estimate/many", json={"space": SPACE.name, "indices": indices.tolist()}))
    assert points["latency_ms"] == pytest.approx(estimator.estimate_space(SPACE, indices).tolist(), rel=1e-12)
    one = SPACE.point_from_row(indices[0])
    assert points["latency_ms"][0] == pytest.approx(estimator.estimate(SPACE.arch(one)).latency_ms, rel=1e-9)


def test_ranking_validation_devices_and_models_are_the_commands(client: TestClient, db: str) -> None:
    assert ok(client.get("/api/rank", params={"devices": "cpu,pixel", "budget_ms": 40})) == cli_json(
        "rank", "--devices", "cpu,pixel", "--budget-ms", "40", "--no-profile", "--db", db
    )
    validation = ok(client.get("/api/validation"))
    assert [r["name"] for r in validation["rows"]] == MODELS[:4] and validation["calibrated"]
    assert validation["within_10pct"] == pytest.approx(np.mean([abs(r["error"]) <= 0.1 for r in validation["rows"]]))
    devices = {d["name"]: d for d in ok(client.get("/api/devices"))}
    cpu_rows = len({s.key for m in MODELS for s in blocks_of(m)} | {s.key for s in SPACE.all_specs()})
    assert devices["cpu"]["coverage"][0]["rows"] == {"measured": cpu_rows} and devices["cpu"]["e2e_runs"] == 12
    (calibration,) = devices["cpu"]["calibrations"]
    assert calibration["runs"] == 8 and calibration["cv_rmspe"] > 0 and calibration["dtype"] == "fp32"
    assert devices["pixel"]["calibrations"] == [] and devices["pixel"]["last_measured_at"]
    assert [m["name"] for m in ok(client.get("/api/models"))] == list_models()
    assert ok(client.get("/api/farm")) == {
        "available": False,
        "reason": "The device farm's queue lives in a PostgreSQL table; this is SQLite.",
    }


BAD = [
    ("get", "/api/estimate/dmasking_f9", {}, None, 404, "There is no model 'dmasking_f9'"),
    ("get", "/api/estimate/..%2F..%2Fetc%2Fpasswd", {}, None, 404, "Not Found"),
    ("get", "/api/estimate/tests%2Fdata%2Ftiny_space.json", {}, None, 404, "Not Found"),
    ("get", "/api/estimate/pyproject.toml", {}, None, 404, "There is no model 'pyproject.toml'"),
    ("get", "/api/estimate/dmasking_f1", {"device": "toaster"}, None, 404, "The table has no device 'toaster'"),
    ("get", "/api/estimate/dmasking_f1", {"dtype": "int3"}, None, 400, "dtype must be one of"),
    ("get", "/api/estimate/dmasking_f1", {"dtype": "int8"}, None, 400, "int8 runs on the executorch backend"),
    ("get", "/api/estimate/dmasking_f1", {"threads": "0"}, None, 422, "threads: Input should be greater than"),
    ("get", "/api/estimate/dmasking_f1", {"backend": "onnxruntime"}, None, 404, "not in the table"),
    ("get", "/api/tables/../../etc/passwd", {}, None, 404, "Not Found"),
    ("get", "/api/tables/nas101", {}, None, 404, "There is no search space 'nas101'"),
    ("get", "/api/rank", {"budget_ms": "-1"}, None, 422, "budget_ms"),
    ("post", "/api/estimate", {}, b"{not json", 400, "The request body is not JSON."),
    ("post", "/api/estimate", {}, b"[" * 50 + b"]" * 50, 400, "nested deeper than 8 levels"),
    ("post", "/api/estimate", {}, b'"tiny.json"', 400, "An architecture is an ARCH.json object"),
    ("post", "/api/estimate", {}, b'{"resolution": 224, "blocks": [{"op": "nope"}]}', 400, "blocks must be a list"),
    ("post", "/api/estimate/many", {}, b'{"archs": []}', 400, "'archs' is a list of 1 to"),
    ("post", "/api/estimate/many", {}, b'{"space": "fbnetv2_f1", "indices": [[0]]}', 400, "holds 1 to"),
    ("post", "/api/estimate/many", {}, b'{"space": "fbnetv2_f1", "indices": [["x"]]}', 400, "whole numbers"),
    ("post", "/api/estimate/many", {}, b"{}", 400, 'Send {"archs"'),
    ("delete", "/api/devices", {}, None, 405, "Method Not Allowed"),
    ("put", "/api/estimate", {}, b"{}", 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "message"), BAD, ids=[f"{b[0]} {b[1]}" for b in BAD]
)
def test_bad_requests_are_one_sentence_with_a_4xx(
    client: TestClient, method, path, params, body, status, message
) -> None:
    response = client.request(method, path, params=params, content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and "Traceback" not in response.text


def test_points_out_of_range_and_a_body_too_large_are_refused(db: str) -> None:
    indices = SPACE.sample_indices(3, seed=0)
    indices[1, 0] = 99
    with LutStore(db, read_only=True) as store, TestClient(create_app(store, max_body_bytes=1000)) as small:
        response = small.post("/api/estimate/many", json={"space": SPACE.name, "indices": indices.tolist()})
        assert response.status_code == 400 and "out of range" in response.json()["error"]
        big = small.post("/api/estimate", content=b" " * 2000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "at most 1000 bytes" in big.json()["error"]

        def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
            yield from [b" " * 600, b" " * 600]

        streamed = small.post("/api/estimate", content=chunks())
        assert streamed.status_code == 413


def test_the_token_is_required_on_every_request_when_set(db: str) -> None:
    with LutStore(db, read_only=True) as store, TestClient(create_app(store, token="s3cret")) as c:
        for path in ("/api/devices", "/", "/static/lut.css", "/api/openapi.json"):
            refused = c.get(path)
            assert refused.status_code == 401 and "needs its token" in refused.json()["error"]
        assert c.get("/api/devices", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/devices", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        opened = c.get("/", params={"token": "s3cret"})  # a browser opens the link once; the cookie carries it
        assert opened.status_code == 200 and "lut_token" in opened.headers["set-cookie"]
        assert c.get("/rank").status_code == 200
        c.cookies.clear()
        assert c.get("/rank").status_code == 401


def test_the_openapi_description_is_served_and_no_page_loads_from_a_cdn(client: TestClient) -> None:
    spec = ok(client.get("/api/openapi.json"))
    assert {"/api/estimate/{model}", "/api/estimate/many", "/api/tables/{space}", "/api/rank"} <= set(spec["paths"])
    methods = {m for path in spec["paths"].values() for m in path}
    assert methods == {"get", "post"}  # nothing writes; the posts carry architectures to estimate
    assert client.get("/docs").status_code == 404
    for page in ("/", "/model/dmasking_f1", "/rank", "/validation", "/farm"):
        html = client.get(page).text
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def test_a_write_to_the_table_while_serving_is_seen_on_the_next_request(tmp_path: Path) -> None:
    db = make_table(tmp_path / "lut.sqlite")
    with LutStore(db, read_only=True) as store, TestClient(create_app(store)) as c, LutStore(db) as writer:
        before = ok(c.get("/api/estimate/dmasking_f1"))["latency_ms"]
        spec = blocks_of("dmasking_f1")[3]
        (row,) = [r for r in writer.measurements(CPU) if r.block_key == spec.key]
        later = replace(row.provenance, measured_at=now() + timedelta(seconds=1))
        writer.put_measurement(replace(row, stats=row.stats.scaled(3.0), provenance=later))
        after = ok(c.get("/api/estimate/dmasking_f1"))
        assert after["latency_ms"] > before
        assert after == json.loads(to_json(Estimator(CPU, db=db).estimate("dmasking_f1").to_dict()))
        with pytest.raises(Exception, match="opened for reading only"):
            store.put_measurement(row)  # the service's own store refuses writes


class Served:
    """`lut serve` in a process of its own on a free port of this machine (a context manager)."""

    def __init__(self, db: str, token: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url, self.token = f"http://127.0.0.1:{port}", token
        env = {k: v for k, v in os.environ.items() if k != "LUT_SERVE_TOKEN"}
        env |= {"LUT_SERVE_TOKEN": token} if token else {}
        args = [sys.executable, "-m", "latency.cli", "serve", "--db", db, "--port", str(port)]
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Served:
        deadline = time.monotonic() + 60
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"lut serve exited: {self.process.stderr.read()}")
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/models", headers=headers))
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("lut serve did not answer within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture(scope="module")
def server(db: str) -> Iterator[str]:
    with Served(db, token="t0ken") as served:
        yield served.url


def test_a_search_that_cannot_reach_the_table_asks_the_service(server: str, db: str) -> None:
    remote = RemoteEstimator("cpu", server, token="t0ken")
    local = Estimator(CPU, db=db)
    assert remote.estimate("dmasking_f3") == local.estimate("dmasking_f3")
    archs = SPACE.sampled_archs(4, seed=9)
    assert remote.estimate_many(archs).tolist() == pytest.approx(local.estimate_many(archs).tolist(), rel=1e-12)
    from_service = LatencyCost(SPACE, url=server, token="t0ken")
    from_table = LatencyCost(SPACE, CPU, db=db)
    assert from_service.calibrated and from_service.intercept_ms == from_table.intercept_ms
    for i in range(len(SPACE.positions)):
        assert torch.equal(getattr(from_service, f"latency_{i}"), getattr(from_table, f"latency_{i}"))
    for point in SPACE.sample(3, seed=4):
        widths, resolution = from_table.one_hot(point)
        assert from_service(widths, resolution).item() == pytest.approx(local.estimate(SPACE.arch(point)).latency_ms)
    with pytest.raises(Exception, match="answered 401"):
        RemoteEstimator("cpu", server, token="wrong").estimate("dmasking_f1")
    with pytest.raises(Exception, match="answered 404: The table has no device 'toaster'"):
        RemoteEstimator("toaster", server, token="t0ken").estimate("dmasking_f1")


def test_sigterm_lets_the_request_in_flight_finish(db: str) -> None:
    with Served(db) as served:
        url, process = served.url, served.process
        answers: list[object] = []
        answered_at: list[float] = []

        def ask() -> None:  # the phone's first ranking fits a predictor for its missing blocks: seconds
            try:
                with urllib.request.urlopen(f"{url}/api/rank?devices=cpu,pixel", timeout=60) as response:
                    answers.append(json.loads(response.read()))
                    answered_at.append(time.monotonic())
            except Exception as exc:  # what the test reports
                answers.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        asking.join(60)
        # uvicorn finishes what is in flight, then exits by the signal it was sent (as a plain process would)
        assert process.wait(60) in (0, -signal.SIGTERM)
        (answer,) = answers
        assert isinstance(answer, dict) and answer["columns"] == ["cpu", "pixel"], answer
        assert answered_at[0] > terminated_at  # it was in flight when the signal came


def test_lut_serve_says_where_it_listens_and_refuses_a_table_that_is_not_there(tmp_path: Path) -> None:
    missing = lut("serve", "--db", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 1 and "There is no lut table to read" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()
    assert "Serve the table read-only" in lut("serve", "--help").stdout


def test_the_family_estimates_agree_between_api_and_a_fresh_estimator(client: TestClient, db: str) -> None:
    estimator = Estimator(CPU, db=db)
    for arch in family_archs(["all"]):
        assert ok(client.get(f"/api/estimate/{arch.name}"))["latency_ms"] == estimator.estimate(arch).latency_ms


def test_a_team_table_on_postgresql_is_served_with_its_farm(pg_store_url: str) -> None:
    from latency.jobs.farm.queue import enqueue_blocks

    with LutStore(pg_store_url) as store:
        fill(store, blocks_of("dmasking_f1"))
        with TestClient(create_app(LutStore(pg_store_url, read_only=True))) as c:
            assert ok(c.get("/api/farm")) == {"available": True, "devices": []}  # no queue made yet, none made now
            queued = enqueue_blocks(store, Conditions("pixel"), blocks_of("dmasking_f2"), "quick", job_size=5)
            farm = ok(c.get("/api/farm"))
            (pixel,) = farm["devices"]
            assert pixel["device"] == "pixel" and pixel["jobs"]["queued"] == len(queued.jobs) > 1
            assert pixel["blocks"]["queued"] == queued.queued_blocks and pixel["workers"] == []
            page = c.get("/farm").text
            assert "<td>pixel</td>" in page and f'<td class="num">{len(queued.jobs)}</td>' in page
            assert ok(c.get("/api/estimate/dmasking_f1")) == json.loads(
                to_json(Estimator(CPU, store=store).estimate("dmasking_f1").to_dict())
            )


def test_a_charts_ticks_label_the_range_it_plots() -> None:
    from latency.serve.charts import Point, scatter

    svg = scatter([Point("f1", 1.4, 68.3), Point("l3", 16.5, 78.9)], "ms", "top-1")
    labels = [float(t) for t in re.findall(r'class="tick"[^>]*>([0-9.]+)</text>', svg)]
    assert {70.0, 75.0} <= set(labels) and {5.0, 10.0, 15.0} <= set(labels)
    assert all(0.5 <= t <= 17.5 or 67 <= t <= 80 for t in labels)


def test_review_findings_stay_fixed(client: TestClient, db: str, tmp_path: Path) -> None:
    # fractional or boolean choices are not choices
    for rows in ([[1.9] * len(SPACE.dimensions)], [[True] * len(SPACE.dimensions)]):
        bad = client.post("/api/estimate/many", json={"space": SPACE.name, "indices": rows})
        assert bad.status_code == 400 and "whole numbers" in bad.json()["error"]
    # an empty device list is a user's error, not a 500
    empty = client.get("/api/rank", params={"devices": ","})
    assert empty.status_code == 400 and "at least one device" in empty.json()["error"]
    # one spelling per deployment: the validation finds the runs the estimate is calibrated for
    assert client.get("/api/validation", params={"deploy_env": " default"}).status_code == 200
    # a token a header or a cookie would mangle is refused when the app is made
    with LutStore(db, read_only=True) as store:
        for token in ("", "a;b", "tök", "two words"):
            with pytest.raises(LutError, match="A service token is"):
                create_app(store, token=token)
    # opened read-only, a table whose last rows are still in its WAL (a writer that died before a
    # checkpoint) shows those rows, and opening and closing it writes nothing into the file
    source = tmp_path / "source.sqlite"
    make_table(source)
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE measurements SET median_us = median_us * 2")
    writer.commit()
    copy = tmp_path / "copy" / "lut.sqlite"
    copy.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{source}{suffix}", f"{copy}{suffix}")
    writer.close()
    before = copy.read_bytes()
    with LutStore(str(copy), read_only=True) as reader:
        reader.revision()
        doubled = reader.measurement_map(CPU)
    with LutStore(str(source), read_only=True) as original:
        assert {k: r.stats.median_us for k, r in doubled.items()} == {
            k: r.stats.median_us for k, r in original.measurement_map(CPU).items()
        }
    assert copy.read_bytes() == before
