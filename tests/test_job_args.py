"""A farm job's arguments are data, checked by one schema before anything runs (latency.jobs.farm.job_args)."""

from __future__ import annotations

import json
import re

import pytest

from latency.jobs.farm import ALLOWED_BY_DEFAULT, JobRefused, admitted
from latency.jobs.farm.job_args import BlocksJob, InvalidJob, RunsJob, parse_job
from latency.vocab.deploy_env import DeployEnv
from latency.vocab.family import blocks_of
from tests.test_farm import MODELS

CONDITIONS = {"device": "cpu", "backend": "torch", "threads": 1, "batch": 1, "dtype": "fp32", "protocol": "quick"}
KEY = blocks_of(MODELS[0])[1].key
ARCH = json.dumps(MODELS[0])
RUNS = {**CONDITIONS, "tag": "calibration", "deploy_env": "default", "archs": [ARCH]}


def test_the_jobs_lut_queues_parse() -> None:
    blocks = parse_job({**CONDITIONS, "keys": [KEY]})
    assert isinstance(blocks, BlocksJob) and [s.key for s in blocks.specs] == [KEY]
    assert (blocks.conditions.device, blocks.conditions.backend, blocks.protocol) == ("cpu", "torch", "quick")
    runs = parse_job(RUNS)
    assert isinstance(runs, RunsJob) and runs.tag == "calibration" and runs.deploy_env == DeployEnv()
    assert runs.archs[0].resolution == 32 and len(runs.archs[0].layers) == len(MODELS[0]["blocks"])


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({**CONDITIONS, "keys": [KEY], "runner": "/bin/sh"}, "the job holds 'runner', which no job lut queues holds"),
        ({**RUNS, "program": "/tmp/x.pte"}, "the job holds 'program', which no job lut queues holds"),
        ({**CONDITIONS, "keys": [KEY], "serial": "X"}, "the job holds 'serial'"),
        ({"keys": [KEY]}, "the job lacks 'backend'"),
        ({**CONDITIONS, "keys": ["ir_k3_rm_-rf"]}, "'ir_k3_rm_-rf' is not a block key"),
        ({**CONDITIONS, "keys": 7}, "'keys' must be a non-empty list, got 7"),
        ({**CONDITIONS, "keys": []}, "'keys' must be a non-empty list"),
        ({**CONDITIONS, "keys": [7]}, "'keys' must hold texts, got 7"),
        ({**CONDITIONS, "keys": [KEY] * 5000}, "'keys' holds 5000 items, more than the 4096"),
        ({**CONDITIONS, "keys": ["x" * 300]}, "is 300 characters long, more than the 256 allowed"),
        ({**CONDITIONS, "keys": [KEY], "protocol": "forever"}, "'protocol' must be one of standard"),
        ({**CONDITIONS, "keys": [KEY], "backend": "tflite"}, "'backend' must be one of torch"),
        ({**CONDITIONS, "keys": [KEY], "dtype": "int4"}, "'dtype' must be one of fp32"),
        ({**CONDITIONS, "keys": [KEY], "threads": True}, "'threads' must be an integer from 1 to 1024, got True"),
        ({**CONDITIONS, "keys": [KEY], "threads": 10**9}, "'threads' must be an integer from 1 to 1024"),
        ({**CONDITIONS, "keys": [KEY], "batch": 0}, "'batch' must be an integer from 1 to 4096, got 0"),
        ({**CONDITIONS, "keys": [KEY], "device": "../etc"}, "'device' must be a device name, got '../etc'"),
        ({**CONDITIONS, "keys": [KEY], "device": "p" * 200}, "'device' is 200 characters long, more than the 128"),
        ({**RUNS, "archs": ["x" * 10_000_000]}, "an item of 'archs' is 10000000 characters long, more than the 262144"),
        ({**RUNS, "archs": ["[" * 100_000]}, "a queued architecture: nested too deeply"),
        ({**RUNS, "archs": ["{"]}, "a queued architecture: not valid JSON"),
        ({**RUNS, "archs": [json.dumps({**MODELS[0], "resolution": 10**6})]}, "h must be at most 8192"),
        ({**RUNS, "archs": [json.dumps({**MODELS[0], "shell": "ls"})]}, "field 'shell' is unknown"),
        ({**RUNS, "archs": [ARCH] * 65}, "'archs' holds 65 items, more than the 64"),
        ({**RUNS, "deploy_env": "=x"}, "'=x' is not a deployment environment"),
        ({**RUNS, "deploy_env": None}, "'deploy_env' must be a text, got None"),
        ({**RUNS, "tag": ["calibration"]}, "'tag' must be a text"),
    ],
)
def test_malformed_arguments_are_refused_with_their_reason(args: dict, reason: str) -> None:
    with pytest.raises(InvalidJob, match=re.escape(reason)):
        parse_job(args)


def test_a_worker_admits_only_its_device_and_the_environments_its_owner_allows() -> None:
    assert isinstance(admitted(RUNS, "cpu", ALLOWED_BY_DEFAULT), RunsJob)
    assert isinstance(admitted({**RUNS, "deploy_env": "tuned-malloc"}, "cpu", ALLOWED_BY_DEFAULT), RunsJob)
    preload = {**RUNS, "deploy_env": "LD_PRELOAD=/tmp/evil.so"}
    with pytest.raises(JobRefused) as refused:
        admitted(preload, "cpu", ALLOWED_BY_DEFAULT)
    assert str(refused.value) == (
        "this worker does not allow the deployment environment 'LD_PRELOAD=/tmp/evil.so'; start it with "
        "--allow-deploy-env 'LD_PRELOAD=/tmp/evil.so' to measure it"
    )
    allowed = ALLOWED_BY_DEFAULT | {DeployEnv.parse("LD_PRELOAD=/tmp/evil.so")}
    assert admitted(preload, "cpu", allowed).deploy_env.name == "LD_PRELOAD=/tmp/evil.so"
    # one variable more than allowed is another environment
    with pytest.raises(JobRefused, match=re.escape("'LD_PRELOAD=/tmp/evil.so,PYTHONPATH=/tmp'")):
        admitted({**RUNS, "deploy_env": "LD_PRELOAD=/tmp/evil.so,PYTHONPATH=/tmp"}, "cpu", allowed)
    with pytest.raises(JobRefused, match="the job is for device 'pixel', and this worker measures 'cpu'"):
        admitted({**CONDITIONS, "device": "pixel", "keys": [KEY]}, "cpu", ALLOWED_BY_DEFAULT)
    with pytest.raises(JobRefused, match="the job's arguments are not a job lut queues: the job holds 'runner'"):
        admitted({**CONDITIONS, "keys": [KEY], "runner": "/bin/sh"}, "cpu", ALLOWED_BY_DEFAULT)
