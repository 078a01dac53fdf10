"""LatencyCost: the expected end-to-end latency of a search space's architecture under independent
categorical choices (softmax or Gumbel-softmax weights), differentiable in every probability.

Every block's latency depends on at most four choices: its input width (the previous group's
output choice), its mid width, its output width and the input resolution. With independent
choices the expectation of a block is exactly the table contracted with those four probability
vectors, a multilinear form (the input-output term is the bilinear one), and the network's
expectation is the sum over blocks plus the calibration's intercept. For one-hot probabilities it
is `Estimator.estimate` of that architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from latency.estimate.estimator import Estimator
from latency.estimate.remote import RemoteEstimator
from latency.vocab.conditions import Conditions
from latency.vocab.space import Position, Space, SpacePoint, get_space

Probs = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


class LatencyCost(nn.Module):
    """`cost(width_probs, resolution_probs)` -> expected latency (ms), a tensor with gradients.

    `width_probs`: per searched width dimension a tensor `[..., options]` of probabilities, either
    a mapping keyed by the space's dimension names (`width:g0`, ..., `mid:2`, ...) or a sequence in
    the space's order (groups, then mids). `resolution_probs`: `[..., resolutions]`. Leading
    dimensions broadcast: a batch of probability sets gives a batch of costs.

    The tables come from `estimator`, else from a `lut serve` at `url` (with its `token`), else from the
    table at `db` (latency.estimate.Estimator).
    """

    def __init__(
        self,
        space: Space | str,
        conditions: Conditions | str = "cpu",
        db: str | None = None,
        deploy_env: str = "default",
        estimator: Estimator | RemoteEstimator | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.space = get_space(space) if isinstance(space, str) else space
        if estimator is None and url is not None:  # a `lut serve` answers: the search never opens the table
            estimator = RemoteEstimator(conditions, url, token, deploy_env)
        estimator = estimator or Estimator(conditions, db=db, deploy_env=deploy_env)
        latency = estimator.space_tables(self.space)  # first: a remote estimator's intercept is of its answer
        self.calibrated = estimator.calibrated
        self.intercept_ms = estimator.intercept_ms
        self.positions = self.space.positions
        flops, params = self._count_tables()
        for i, (lat, fl, pa) in enumerate(zip(latency, flops, params, strict=True)):
            # float64: the tables are small, and one-hot costs then equal the estimate to 1e-12.
            self.register_buffer(f"latency_{i}", torch.as_tensor(lat, dtype=torch.float64))
            self.register_buffer(f"flops_{i}", torch.as_tensor(fl, dtype=torch.float64))
            self.register_buffer(f"params_{i}", torch.as_tensor(pa, dtype=torch.float64))

    def _count_tables(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        flops, params = [], []
        for position in self.positions:
            specs = self.space.position_specs(position)
            flops.append(np.vectorize(lambda s: s.flops / 1e6, otypes=[float])(specs))
            params.append(np.vectorize(lambda s: s.params / 1e6, otypes=[float])(specs))
        return flops, params

    @property
    def dimension_names(self) -> list[str]:
        """Names of the width dimensions, in the order a sequence of probabilities must follow."""
        return [name for name, _ in self.space.dimensions if name != "resolution"]

    def _as_mapping(self, width_probs: Probs) -> dict[str, torch.Tensor]:
        names = self.dimension_names
        if isinstance(width_probs, Mapping):
            missing = [n for n in names if n not in width_probs]
            if missing:
                raise KeyError(f"width probabilities missing for {', '.join(missing)}")
            return dict(width_probs)
        if len(width_probs) != len(names):
            raise ValueError(
                f"expected {len(names)} width probability tensors ({', '.join(names)}), got {len(width_probs)}"
            )
        return dict(zip(names, width_probs, strict=True))

    def _contract(self, kind: str, width_probs: Probs, resolution_probs: torch.Tensor) -> torch.Tensor:
        probs = self._as_mapping(width_probs)
        total: torch.Tensor | None = None
        for i, position in enumerate(self.positions):
            table = getattr(self, f"{kind}_{i}")
            p_in, p_mid, p_out = self._position_probs(position, probs, table)
            p_res = resolution_probs.to(table.dtype) if table.shape[3] > 1 else resolution_probs.new_ones(1)
            term = torch.einsum("...a,...m,...b,...r,ambr->...", p_in, p_mid, p_out, p_res, table)
            total = term if total is None else total + term
        assert total is not None
        return total.to(resolution_probs.dtype)  # the caller's precision

    def _position_probs(
        self, position: Position, probs: dict[str, torch.Tensor], table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        one = table.new_ones(1)
        p_in = probs[f"width:{position.in_group}"].to(table.dtype) if position.in_group else one
        p_mid = (
            probs[f"mid:{self.space.mid_blocks[position.mid_dim]}"].to(table.dtype)
            if position.mid_dim is not None
            else one
        )
        p_out = probs[f"width:{position.out_group}"].to(table.dtype) if position.out_group else one
        return p_in, p_mid, p_out

    def forward(self, width_probs: Probs, resolution_probs: torch.Tensor) -> torch.Tensor:
        """Expected end-to-end latency in milliseconds."""
        return self._contract("latency", width_probs, resolution_probs) + self.intercept_ms

    def expected_flops(self, width_probs: Probs, resolution_probs: torch.Tensor) -> torch.Tensor:
        """Expected multiply-adds (M), the FBNetV2 F-models' cost."""
        return self._contract("flops", width_probs, resolution_probs)

    def expected_params(self, width_probs: Probs, resolution_probs: torch.Tensor) -> torch.Tensor:
        """Expected weights (M), the budget the P-models were searched under."""
        return self._contract("params", width_probs, resolution_probs)

    def one_hot(self, point: SpacePoint) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The probabilities that put all mass on one point of the space."""
        tensors = [
            torch.nn.functional.one_hot(torch.tensor(v), n).double()
            for v, (_, n) in zip(point.row, self.space.dimensions, strict=True)
        ]
        return dict(zip(self.dimension_names, tensors[1:], strict=True)), tensors[0]
