"""FBNetV2's channel/resolution DNAS, driven by the lookup table's LatencyCost.

Weights and architecture parameters are updated alternately (weights on the training split,
architecture on the validation split), with Gumbel-softmax weights whose temperature anneals
over the epochs. The proxy task is scikit-learn's digits (real images that ship with the
package): small enough for a 2-core CPU. The latency term always refers to the space's
deployment resolutions on the target device; only the proxy images are small.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latency.vocab.arch import Arch
from latency.vocab.errors import LutError
from latency.vocab.space import Space, SpacePoint
from search_cost.cost import LatencyCost
from search_cost.data import DigitsData, FolderData
from search_cost.distributed import ONE_PROCESS, Ranks, average_gradients, global_batch_norm, global_sum
from search_cost.supernet import DMaskingSupernet


class SearchError(LutError):
    """A search that cannot start or go on (its checkpoint, say), in one sentence."""


# Below 8 pixels nothing is left to see; above 256 the supernet's activations outgrow a GPU's memory.
MIN_PROXY_SIZE, MAX_PROXY_SIZE = 8, 256


def pick_train_device(name: str | None) -> str:
    """Where the supernet trains: `name`, checked, or the first GPU when there is one."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SearchError(f"--train-device '{name}' is not a device: use cpu, cuda or cuda:N.", exit_code=2) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SearchError(f"--train-device {name}: this machine has no CUDA GPU (use cpu).", exit_code=2)
    if device.type not in ("cpu", "cuda"):
        raise SearchError(f"--train-device '{name}' is not supported: use cpu, cuda or cuda:N.", exit_code=2)
    return str(device)


def default_proxy_resolutions(count: int) -> tuple[int, ...]:
    """Proxy-task image sizes for a space with `count` resolution options: 16, 20, 24, ... pixels, in the
    order of the options (the digits are 8x8: larger sizes only cost time)."""
    return tuple(16 + 4 * i for i in range(count))


@dataclass(frozen=True)
class SearchConfig:
    target_ms: float
    epochs: int = 16
    warmup_epochs: int = 3  # weights only, so the architecture is not judged by untrained weights
    batch: int = 64
    seed: int = 0
    loss: str = "target"  # "target": CE + w (log E[lat] - log T)^2; "fbnet": CE * alpha * log(E[lat])^beta
    latency_weight: float = 20.0
    alpha: float = 0.2
    beta: float = 0.6
    weight_lr: float = 0.05
    arch_lr: float = 0.05
    initial_temperature: float = 5.0
    final_temperature: float = 0.2
    proxy_resolutions: tuple[int, ...] = (16, 20, 24, 28)
    images: int | None = None  # use only the first N digits (smoke tests); None: all 1797
    data: str | None = None  # an image folder (search_cost.data) instead of the digits
    # Where and how the supernet trains: not part of what is searched (a checkpoint resumes on another).
    workers: int = field(default=0, compare=False)
    train_device: str = field(default="cpu", compare=False)
    mixed_precision: bool = field(default=True, compare=False)  # bfloat16 autocast, on a GPU only

    def __post_init__(self) -> None:
        if self.loss not in ("target", "fbnet"):
            raise ValueError(f"loss must be 'target' or 'fbnet', not {self.loss!r}")
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise ValueError(f"target_ms must be a positive number of milliseconds, not {self.target_ms!r}")
        if not all(MIN_PROXY_SIZE <= size <= MAX_PROXY_SIZE for size in self.proxy_resolutions):
            raise ValueError(
                f"proxy resolutions must be between {MIN_PROXY_SIZE} and {MAX_PROXY_SIZE} pixels, "
                f"not {list(self.proxy_resolutions)}"
            )

    def temperature(self, epoch: int) -> float:
        """Exponential annealing from the initial to the final temperature over the epochs."""
        span = max(self.epochs - 1, 1)
        return self.initial_temperature * (self.final_temperature / self.initial_temperature) ** (epoch / span)

    def digest(self) -> str:
        searched = {k: v for k, v in asdict(self).items() if k not in ("workers", "train_device", "mixed_precision")}
        if self.data is None:
            del searched["data"]  # digests of digits searches stay those of earlier checkpoints
        return hashlib.sha256(json.dumps(searched, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EpochLog:
    epoch: int
    temperature: float
    train_loss: float
    proxy_accuracy: float
    expected_latency_ms: float
    seconds: float
    images_per_s: float = 0.0  # training images through the supernet (weight and architecture steps)


@dataclass
class SearchResult:
    arch: Arch
    point: SpacePoint  # the argmax, projected onto the budget when it overshot (see fit_to_budget)
    argmax: SpacePoint
    expected_latency_ms: float
    proxy_accuracy: float
    history: list[EpochLog] = field(default_factory=list)


class Search:
    """One search; `run()` resumes from `checkpoint` when it holds a search of the same config."""

    def __init__(
        self,
        space: Space,
        cost: LatencyCost,
        config: SearchConfig,
        checkpoint: Path | None = None,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        self.space, self.cost, self.config, self.checkpoint, self.ranks = space, cost, config, checkpoint, ranks
        if config.batch < ranks.world:
            raise SearchError(
                f"--batch-size {config.batch} is the global batch: give each of {ranks.world} processes one."
            )
        self.device = torch.device(config.train_device)
        size = max(config.proxy_resolutions)
        if config.data is None:
            self.source: DigitsData | FolderData = DigitsData(config.seed, size, config.images)
        else:
            self.source = FolderData(Path(config.data), config.seed, size, config.workers)
        torch.manual_seed(config.seed)
        self.net = DMaskingSupernet(
            space, num_classes=self.source.num_classes, proxy_resolutions=config.proxy_resolutions
        ).to(self.device)
        # Training goes through `model`: the supernet itself, or under torchrun DDP over its weights with
        # batch statistics over the global batch (search_cost.distributed).
        self.model: torch.nn.Module = self.net
        if ranks.world > 1:
            self.net = global_batch_norm(self.net, config.train_device)
            ids = [self.device] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.cost = cost.to(self.device)
        self.alphas = {name: torch.zeros(n, device=self.device, requires_grad=True) for name, n in space.dimensions}
        self.weight_opt = torch.optim.SGD(
            self.net.parameters(), lr=config.weight_lr, momentum=0.9, weight_decay=4e-5, nesterov=True
        )
        self.arch_opt = torch.optim.Adam(self.alphas.values(), lr=config.arch_lr, betas=(0.5, 0.999))
        self.epoch = 0
        self.history: list[EpochLog] = []
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self._resumed = False

    # ---- pieces ---------------------------------------------------------------------------------
    def _gumbel_weights(self, temperature: float) -> dict[str, torch.Tensor]:
        weights = {}
        for name, alpha in self.alphas.items():
            uniform = torch.rand(alpha.shape, generator=self.generator).clamp_(1e-9, 1 - 1e-9).to(self.device)
            gumbel = -torch.log(-torch.log(uniform))
            weights[name] = torch.softmax((alpha + gumbel) / temperature, dim=-1)
        return weights

    def probabilities(self) -> dict[str, torch.Tensor]:
        return {name: torch.softmax(alpha.detach(), dim=-1) for name, alpha in self.alphas.items()}

    def expected_latency(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        widths = {k: v for k, v in weights.items() if k != "resolution"}
        return self.cost(widths, weights["resolution"])

    def _latency_loss(self, ce: torch.Tensor, latency: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.loss == "fbnet":  # FBNet: CE * alpha * log(LAT)^beta
            return ce * config.alpha * torch.log(latency).clamp_min(1e-6) ** config.beta
        return ce + config.latency_weight * (torch.log(latency) - math.log(config.target_ms)) ** 2

    def point(self) -> SpacePoint:
        """The argmax of every choice."""
        return _point(self.space, [int(self.alphas[name].argmax()) for name, _ in self.space.dimensions])

    def proxy_accuracy(self, point: SpacePoint | None = None) -> float:
        """Held-out accuracy of the supernet with every choice fixed (one-hot) to `point`, by default
        the argmax.

        BN uses batch statistics: its running statistics average over mixed masks and
        resolutions, which the one-hot network never sees (the usual supernet pitfall)."""
        point = point or self.point()
        one_hot = {
            name: F.one_hot(torch.tensor(v, device=self.device), n).float()
            for v, (name, n) in zip(point.row, self.space.dimensions, strict=True)
        }
        saved = {k: v.clone() for k, v in self.net.state_dict().items() if "running" in k or "num_batches" in k}
        self.net.train()
        correct = 0
        with torch.no_grad():
            for x, y in self.source.held_out():
                x, y = x.to(self.device), y.to(self.device)
                with self._autocast():
                    correct += int((self.net(x, one_hot).argmax(1) == y).sum())
        self.net.load_state_dict(saved, strict=False)  # evaluation leaves the running statistics alone
        return correct / self.source.held_out_count

    def _cross_entropy(
        self, x: torch.Tensor, y: torch.Tensor, weights: dict[str, torch.Tensor], global_n: int
    ) -> torch.Tensor:
        """This process's share of the global batch's mean cross-entropy, scaled so that the average over
        processes (DDP's, and the architecture gradients') is the global batch's mean."""
        with self._autocast():
            logits = self.model(x, weights)
        return F.cross_entropy(logits.float(), y, reduction="sum") * (self.ranks.world / global_n)

    def _autocast(self) -> Any:
        """Mixed precision (bfloat16) for the supernet on a GPU; full precision on the CPU."""
        enabled = self.config.mixed_precision and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---- the loop -------------------------------------------------------------------------------
    def run_epoch(self) -> EpochLog:
        started = time.monotonic()
        config = self.config
        temperature = config.temperature(self.epoch)
        search_arch = self.epoch >= config.warmup_epochs
        losses = []
        images = 0
        self.net.train()
        batches = self.source.epoch(self.generator, config.batch, self.ranks)
        for train_x, train_y, held_x, held_y, train_n, held_n in batches:
            if search_arch:  # architecture step on the held-out split
                held_x, held_y = held_x.to(self.device), held_y.to(self.device)
                weights = self._gumbel_weights(temperature)
                ce = self._cross_entropy(held_x, held_y, weights, held_n)
                loss = self._latency_loss(ce, self.expected_latency(weights))
                self.arch_opt.zero_grad()
                loss.backward()
                average_gradients(list(self.alphas.values()), self.ranks)
                self.arch_opt.step()
                images += held_n
            train_x, train_y = train_x.to(self.device), train_y.to(self.device)
            weights = {k: v.detach() for k, v in self._gumbel_weights(temperature).items()}
            loss = self._cross_entropy(train_x, train_y, weights, train_n)
            self.weight_opt.zero_grad()
            loss.backward()
            self.weight_opt.step()
            losses.append(global_sum(loss.item(), self.ranks) / self.ranks.world)
            images += train_n
        probs = self.probabilities()
        with torch.no_grad():
            expected = self.expected_latency(probs).item()
        seconds = time.monotonic() - started
        log = EpochLog(
            self.epoch, temperature, float(np.mean(losses)), self.proxy_accuracy(), expected, seconds, images / seconds
        )
        self.history.append(log)
        self.epoch += 1
        return log

    def run(self, on_epoch: Callable[[EpochLog], None] | None = None) -> SearchResult:
        if not self._resumed:
            self.resume()
        while self.epoch < self.config.epochs:
            log = self.run_epoch()
            self._save()
            if on_epoch:
                on_epoch(log)
        alphas = {k: v.detach() for k, v in self.alphas.items()}
        point = fit_to_budget(self.space, self.cost, self.point(), alphas, self.config.target_ms)
        with torch.no_grad():
            expected = self.expected_latency(self.probabilities()).item()
        return SearchResult(
            self.space.arch(point, name=f"search-{self.config.target_ms:g}ms"),
            point,
            self.point(),
            expected,
            self.proxy_accuracy(point),
            list(self.history),
        )

    # ---- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.config.digest(),
            "epoch": self.epoch,
            "net": self.net.state_dict(),
            "alphas": {k: v.detach() for k, v in self.alphas.items()},
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "generator": self.generator.get_state(),
            "history": [asdict(h) for h in self.history],
        }

    def _save(self) -> None:
        if self.checkpoint is None or not self.ranks.main:  # one writer; every process resumes from it
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint.with_suffix(self.checkpoint.suffix + ".partial")
        torch.save(self._state(), partial)
        os.replace(partial, self.checkpoint)  # atomic: a kill leaves the previous checkpoint whole

    def resume(self) -> int:
        """Load the checkpoint when it is this search's; returns the epoch the search goes on from (0: afresh)."""
        self._resumed = True
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        state = check_checkpoint(self.checkpoint)
        if state.get("config") != self.config.digest():
            return 0  # another search's checkpoint: start afresh (it is overwritten at the first epoch)
        self.epoch = state["epoch"]
        self.net.load_state_dict(state["net"])
        with torch.no_grad():
            for name, value in state["alphas"].items():
                self.alphas[name].copy_(value)
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.generator.set_state(state["generator"])
        self.history = [EpochLog(**h) for h in state["history"]]
        return self.epoch


def check_checkpoint(path: Path) -> dict[str, Any]:
    """The state a search checkpoint holds; SearchError for a folder or a file that is not one."""
    if not path.is_file():
        raise SearchError(f"The checkpoint {path} is not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise SearchError(
            f"Cannot resume from {path}: it is not a search checkpoint ({type(exc).__name__}); "
            "delete it or pass another --checkpoint."
        ) from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise SearchError(f"Cannot resume from {path}: it is not a search checkpoint; delete it or pass another one.")
    return state


def fit_to_budget(
    space: Space,
    cost: LatencyCost,
    point: SpacePoint,
    alphas: dict[str, torch.Tensor],
    target_ms: float,
    tolerance: float = 0.05,
) -> SpacePoint:
    """Project the argmax architecture onto the budget: while its latency exceeds the target by more
    than `tolerance`, take the one-step narrowing (a smaller width, mid or resolution option) that
    saves the most latency per unit of architecture preference given up. A no-op when it fits."""

    def latency(p: SpacePoint) -> float:
        widths, resolution = cost.one_hot(p)
        with torch.no_grad():
            return float(cost(widths, resolution))

    names = [name for name, _ in space.dimensions]
    current, now = point, latency(point)
    while now > target_ms * (1 + tolerance):
        values = [current.resolution, *current.widths, *current.mids]
        best: tuple[float, SpacePoint, float] | None = None
        for d, name in enumerate(names):
            if values[d] == 0:
                continue
            trial = list(values)
            trial[d] -= 1
            candidate = _point(space, trial)
            saved = now - latency(candidate)
            if saved <= 0:
                continue
            given_up = float(alphas[name][values[d]] - alphas[name][values[d] - 1])
            score = saved / max(given_up, 1e-3)
            if best is None or score > best[0]:
                best = (score, candidate, now - saved)
        if best is None:
            break  # nothing narrower helps: the smallest point
        _, current, now = best
    return current


def _point(space: Space, values: list[int]) -> SpacePoint:
    groups = len(space.groups)
    return SpacePoint(values[0], tuple(values[1 : 1 + groups]), tuple(values[1 + groups :]))
