"""The deployment environment: end-to-end times taken as truth run in the user's kind of process."""

from __future__ import annotations

import pytest

from latency.vocab.deploy_env import DEFAULT, TUNED_MALLOC, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import get_arch
from profilers.protocol import PROTOCOLS, Scheduler
from profilers.targets import ArchTarget
from profilers.worker import MALLOC_ENV, WorkerPool
from tests.test_profilers import CANARY, SPECS, ScriptedWorker


def test_names_parse_back_and_presets_have_their_names() -> None:
    assert DeployEnv.parse("default") == DEFAULT and DEFAULT.name == "default"
    assert DeployEnv.parse("tuned-malloc").variables == TUNED_MALLOC
    assert DeployEnv(TUNED_MALLOC).name == "tuned-malloc"
    jemalloc = DeployEnv.parse("LD_PRELOAD=/usr/lib/libjemalloc.so.2, MALLOC_ARENA_MAX=2")
    assert jemalloc.name == "LD_PRELOAD=/usr/lib/libjemalloc.so.2,MALLOC_ARENA_MAX=2"  # sorted, canonical
    assert DeployEnv.parse(jemalloc.name) == jemalloc
    for bad in ("", "tuned", "=1", "1X=2", "A=1,,B=2"):
        with pytest.raises(LutError) as info:
            DeployEnv.parse(bad)
        assert info.value.exit_code == 2


def test_the_default_process_drops_tuning_and_keeps_the_rest() -> None:
    caller = {"PATH": "/bin", "HOME": "/root", **MALLOC_ENV, "OMP_NUM_THREADS": "1", "LD_PRELOAD": "x.so"}
    assert DEFAULT.process_env(caller) == {"PATH": "/bin", "HOME": "/root"}
    tuned = DeployEnv(TUNED_MALLOC).process_env(caller)
    assert tuned == {"PATH": "/bin", "HOME": "/root", **MALLOC_ENV}


def test_deployment_workers_run_without_the_protocol_tuning() -> None:
    quick = PROTOCOLS["quick"]
    arch = get_arch("dmasking_f1")
    with WorkerPool("torch", 1, 1) as tuned, WorkerPool("torch", 1, 1, deploy_env=DEFAULT) as plain:
        assert tuned.workers[0].info["environment"]["malloc"] == MALLOC_ENV
        assert plain.workers[0].info["environment"]["malloc"] == {k: None for k in MALLOC_ENV}
        # A whole network timed in the plain process, the canary in the tuned one.
        result = next(Scheduler(plain.workers, quick, canary_worker=tuned.workers[0]).run([ArchTarget(arch)]))
    assert result.ok and result.stats.median_us > 0 and result.canary_us is not None


def test_the_canary_runs_in_its_own_worker_for_every_trial() -> None:
    protocol = PROTOCOLS["standard"]
    networks = [ScriptedWorker({}) for _ in range(protocol.launches)]
    canary = ScriptedWorker({CANARY: [300.0]})
    result = next(Scheduler(networks, protocol, canary_worker=canary).run([SPECS[0]]))
    assert all(CANARY not in [k for k, _ in w.calls] for w in networks)
    assert [k for k, _ in canary.calls] == [CANARY] * protocol.trials
    assert result.canary_us == 300.0
