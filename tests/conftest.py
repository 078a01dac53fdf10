"""Shared fixtures: small seeded models and official-layout checkpoint files made on the fly."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg import pg_server_url, pg_store_url  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_test_process() -> Iterator[None]:
    """The suite runs in two processes on two cores (pytest-xdist, README). A library that spreads over
    every core in both (torch's intra-op pool, the OpenMP of scikit-learn's boosting) spins against the
    other process: measured here, a predictor fit and a tiny search ran 20x slower than alone. One thread
    in each test process; the measuring workers set their own threads."""
    import sklearn.ensemble  # noqa: F401  (loads its OpenMP runtime, so that the limit reaches it)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(autouse=True)
def torch_grad_mode_kept() -> Iterator[None]:
    """A backend's setup turns autograd off for its whole process (a measuring worker's); tests that run one
    in-process must not leave the next test, in the same xdist worker, unable to take a gradient."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(scope="session", autouse=True)
def a_cache_of_the_suites_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lut keeps files in the user's cache (the default table, exported programs): the suite keeps its own,
    so that nothing a run leaves there makes another pass or fail."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def randomize_model(model, seed: int = 0):
    """Seeded weights and non-trivial BN statistics, so that a wrong mapping changes the output."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model.eval()


SLOW_TEST_S = 60.0


# What makes a test an integration test: a real server or phone among its fixtures, or a module whose
# tests run the lut command, measure in worker processes or train (each takes seconds, not milliseconds).
INTEGRATION_FIXTURES = {"pg_server_url", "pg_store_url", "fake_adb"}
INTEGRATION_MODULES = {
    "test_android",
    "test_cli_estimate",
    "test_cli_profile",
    "test_cuda",
    "test_deploy_env",
    "test_farm",
    "test_human_output",
    "test_in_context",
    "test_install",
    "test_profilers",
    "test_search",
    "test_serve",
    "test_serve_pages",
    "test_store_sqlite",
    "test_transfer",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Name a failure or a slow test the moment it finishes (in the controller under xdist), so that a
    run cut off by CI's time limit still shows what failed and where the time went."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's stderr is the terminal too: the controller says it
        return
    failed = report.failed and (report.when == "call" or report.outcome == "failed")
    slow = report.when == "call" and report.duration >= SLOW_TEST_S
    if failed or slow:
        import sys

        verdict = "FAILED" if failed else "slow"
        print(f"\n[{verdict} {report.duration:.0f}s] {report.nodeid}", file=sys.stderr, flush=True)
