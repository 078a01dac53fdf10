"""Shared fixtures: small seeded models and official-layout checkpoint files made on the fly."""

from __future__ import annotations

import pytest

from tests.pg import pg_server_url, pg_store_url  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="session")
def torch_threads() -> None:
    import torch

    torch.set_num_threads(1)


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
