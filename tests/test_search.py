"""The DMasking supernet and search: masks, subsampling, gradients, a tiny search, resuming."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latency.estimate.estimator import Estimator
from latency.vocab.family import get_arch
from latency.vocab.space import get_space
from lut_db import LutStore
from search_cost import LatencyCost
from search_cost.data import FolderData, scan_folder
from search_cost.search import Search, SearchConfig, fit_to_budget
from search_cost.supernet import DMaskingSupernet, mixed_mask, prefix_masks
from tests.cli import QUICK, TINY_SPACE, Ran
from tests.cli import lut as run_lut
from tests.test_human_output import check, masked

from .test_cost import SPACE
from .test_estimate import fill

TINY = (8, 8, 12, 12)  # proxy input sizes: seconds per epoch on a CPU
# The searches themselves run on the test space (one resolution, 43 block shapes): on fbnetv2_f4's
# supernet one epoch took minutes on a slow 2-core CI machine.
TINY_SEARCH_SPACE = get_space(str(TINY_SPACE))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("search") / "lut.sqlite")
    with LutStore(path) as store:
        fill(store, SPACE.all_specs() + TINY_SEARCH_SPACE.all_specs())
    return path


@pytest.fixture(scope="module")
def cost(table: str) -> LatencyCost:
    return LatencyCost(SPACE, estimator=Estimator("cpu", db=table))


def test_prefix_masks_and_their_mixture() -> None:
    masks = prefix_masks((2, 3, 5))
    assert masks.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    mixed = mixed_mask(torch.tensor([0.5, 0.25, 0.25]), masks)
    assert mixed.shape == (1, 5, 1, 1)
    assert mixed.flatten().tolist() == [1.0, 1.0, 0.5, 0.25, 0.25]


def one_hot(values: dict[str, int]) -> dict[str, torch.Tensor]:
    return {name: F.one_hot(torch.tensor(values.get(name, n - 1)), n).float() for name, n in SPACE.dimensions}


def test_supernet_runs_each_resolution_on_a_subsampled_input() -> None:
    torch.manual_seed(0)
    net = DMaskingSupernet(SPACE, num_classes=10, proxy_resolutions=(8, 12, 16, 20)).eval()
    x = torch.randn(2, 3, 20, 20)
    weights = one_hot({"resolution": 1})
    with torch.no_grad():
        mixed = net(x, weights)
        alone = net._run_once(F.interpolate(x, size=(12, 12), mode="nearest"), weights)
    assert mixed.shape == (2, 10)
    torch.testing.assert_close(mixed, alone)


def test_a_narrow_mask_zeroes_the_channels_beyond_its_width() -> None:
    torch.manual_seed(0)
    net = DMaskingSupernet(SPACE, num_classes=10, proxy_resolutions=TINY).eval()
    seen = {}
    # What the second block receives: the stem's output after the g0 width mask (an inverted residual
    # is run part by part, so the hook sits on its first part).
    second = net.blocks[1]
    parts = [getattr(second, part, None) for part in ("expand", "depthwise")]
    entry = next((part for part in parts if part is not None), second)
    entry.register_forward_pre_hook(lambda m, args: seen.setdefault("masked", args[0]))
    narrowest = min(SPACE.widths("g0"))
    with torch.no_grad():
        y = net._run_once(torch.randn(1, 3, 12, 12), one_hot({"width:g0": 0}))
    assert y.shape == (1, 10)
    masked = seen["masked"]
    assert masked.shape[1] == max(SPACE.widths("g0"))  # the block runs at its widest
    assert torch.count_nonzero(masked[:, narrowest:]) == 0  # beyond the chosen width: zero
    assert torch.count_nonzero(masked[:, :narrowest]) > 0  # within it: the block's output


def test_gradients_reach_the_architecture_through_both_terms(cost: LatencyCost) -> None:
    search = Search(SPACE, cost, SearchConfig(target_ms=50.0, epochs=1, proxy_resolutions=TINY))
    weights = search._gumbel_weights(temperature=1.0)
    x, y = search.source.tensors[0][:16], search.source.tensors[1][:16]
    ce = F.cross_entropy(search.net(x, weights), y)
    ce.backward(retain_graph=True)
    task = {k: v.grad.clone() for k, v in search.alphas.items()}
    assert all(g.abs().sum() > 0 for g in task.values())
    for alpha in search.alphas.values():
        alpha.grad = None
    latency = search.expected_latency(weights)
    (search._latency_loss(ce.detach(), latency)).backward()
    widths = [k for k in search.alphas if k != "resolution"]
    assert all(search.alphas[k].grad.abs().sum() > 0 for k in widths)
    assert search.alphas["resolution"].grad.abs().sum() > 0


def test_the_fbnet_loss_form_multiplies_the_cross_entropy(cost: LatencyCost) -> None:
    search = Search(
        SPACE, cost, SearchConfig(target_ms=50.0, loss="fbnet", alpha=0.2, beta=0.6, proxy_resolutions=TINY)
    )
    ce, latency = torch.tensor(2.0), torch.tensor(40.0)
    assert search._latency_loss(ce, latency).item() == pytest.approx(2.0 * 0.2 * torch.log(latency).item() ** 0.6)


def test_a_tiny_search_moves_toward_the_target_and_resumes(table: str, tmp_path: Path) -> None:
    space = TINY_SEARCH_SPACE
    cost = LatencyCost(space, estimator=Estimator("cpu", db=table))
    uniform = {n: torch.full((k,), 1.0 / k) for n, k in space.dimensions}
    start = cost({k: v for k, v in uniform.items() if k != "resolution"}, uniform["resolution"]).item()
    target = 0.6 * start
    config = SearchConfig(target_ms=target, epochs=3, warmup_epochs=1, proxy_resolutions=(12,), arch_lr=0.1, images=480)
    checkpoint = tmp_path / "search.ckpt"
    first = Search(space, cost, config, checkpoint)
    first.run_epoch()
    first.run_epoch()
    first._save()
    resumed = Search(space, cost, config, checkpoint)
    assert resumed.resume() == 2 and resumed.epoch == 2 and len(resumed.history) == 2
    for name in first.alphas:
        torch.testing.assert_close(resumed.alphas[name], first.alphas[name])
    result = resumed.run()
    assert len(result.history) == 3
    assert abs(result.expected_latency_ms - target) < abs(start - target)  # moved toward the budget
    # the accuracy reported is that of the architecture returned (within 2 held-out images: BN's batch
    # statistics are summed in threads, so a near tie may flip)
    held_out = resumed.source.held_out_count
    assert abs(result.proxy_accuracy - resumed.proxy_accuracy(result.point)) <= 2 / held_out
    other_config = SearchConfig(target_ms=target * 2, epochs=3, proxy_resolutions=(12,), images=480)
    other = Search(space, cost, other_config, checkpoint)
    assert other.resume() == 0 and other.epoch == 0  # another search's checkpoint is not resumed


def test_the_argmax_is_projected_onto_the_budget(cost: LatencyCost, table: str) -> None:
    estimator = Estimator("cpu", db=table)
    widest = SPACE.point_from_row([n - 1 for _, n in SPACE.dimensions])
    alphas = {n: torch.linspace(0, 1, k) for n, k in SPACE.dimensions}
    f4 = estimator.estimate(get_arch("dmasking_f4")).latency_ms
    point = fit_to_budget(SPACE, cost, widest, alphas, target_ms=f4)
    assert estimator.estimate(SPACE.arch(point)).latency_ms <= f4 * 1.05
    assert fit_to_budget(SPACE, cost, point, alphas, target_ms=1e9) == point  # fits: unchanged


def lut(*args: str, db: str) -> Ran:
    return run_lut(*args, "--db", db, env=QUICK)


@pytest.mark.parametrize(
    ("target", "message"),
    [("0", "must be a positive number"), ("-5", "must be a positive"), ("0.001", "is below the fastest architecture")],
)
def test_targets_that_make_no_sense_are_refused(target: str, message: str, table: str) -> None:
    # the test space: finding the fastest point of fbnetv2_f4 took minutes on a slow 2-core machine
    proc = lut("search", "--space", str(TINY_SPACE), "--target-ms", target, db=table)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_search_command_writes_an_architecture_the_rest_of_lut_accepts(table: str, tmp_path: Path) -> None:
    out = tmp_path / "found.json"
    space, estimator = TINY_SEARCH_SPACE, Estimator("cpu", db=table)
    narrowest = space.point_from_row([0 for _ in space.dimensions])
    widest = space.point_from_row([n - 1 for _, n in space.dimensions])
    ends = [estimator.estimate(space.arch(point)) for point in (narrowest, widest)]
    target = sum(e.latency_ms for e in ends) / 2  # between the narrowest and the widest point
    proc = lut(
        "search",
        "--space",
        str(TINY_SPACE),
        "--target-ms",
        f"{target:.3f}",
        "--epochs",
        "2",
        "--proxy-resolutions",
        "12",
        "--images",
        "480",
        "--out",
        str(out),
        "--no-measure",
        "--json",
        db=table,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["arch"] == str(out) and payload["estimated_ms"] <= target * 1.05
    assert Path(f"{out}.ckpt").is_file()
    written = out.read_text()
    again = lut(*proc.args[:-2], db=table)  # the same command: it resumes from its checkpoint, finished
    assert again.returncode == 0, again.stderr
    assert f"resuming from {out}.ckpt at epoch 2" in again.stderr and out.read_text() == written
    estimate = lut("estimate", str(out), "--no-profile", "--json", db=table)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["latency_ms"] == pytest.approx(payload["estimated_ms"])


def image_folder(root: Path, classes: int = 3, per_class: int = 10, val: bool = True) -> Path:
    """A tiny image folder: each class a colour, with noise, as PNG files of varying sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = {"train": per_class, "val": per_class // 2} if val else {"train": per_class}
    for split, count in splits.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                size = (20 + i % 3 * 4, 18 + i % 2 * 6)
                pixels = np.clip(rng.normal(60 + 60 * c, 30, (*size[::-1], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_an_image_folder_is_split_and_loaded_as_the_search_expects(tmp_path: Path) -> None:
    classes, train, held = scan_folder(image_folder(tmp_path / "with_val"))
    assert classes == ["class0", "class1", "class2"] and len(train.paths) == 30 and len(held.paths) == 15
    classes, train, held = scan_folder(image_folder(tmp_path / "no_val", val=False), seed=3)
    assert len(train.paths) == 24 and len(held.paths) == 6 and not set(train.paths) & set(held.paths)
    assert scan_folder(tmp_path / "no_val", seed=3)[2] == held  # the split is seeded
    data = FolderData(tmp_path / "with_val", seed=0, size=16)
    x, y, hx, hy, n, held_n = next(data.epoch(torch.Generator().manual_seed(0), batch=8))
    assert set(hy.tolist()) <= {0, 1, 2}
    assert x.shape == (8, 3, 16, 16) and hx.shape == (8, 3, 16, 16) and y.dtype == torch.long and n == held_n == 8
    again = next(data.epoch(torch.Generator().manual_seed(0), batch=8))
    torch.testing.assert_close(again[0], x)  # the same crops from the same seed (a resumed epoch)
    assert sum(len(b[1]) for b in data.held_out(batch=4)) == 15
    *_, n, held_n = next(data.epoch(torch.Generator().manual_seed(0), batch=10_000_000))
    assert (n, held_n) == (30, 15)  # one batch of every image, the held-out one no longer than its split


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "train" / "cat").mkdir(parents=True), "has no images in class folders"),
        (lambda root: image_folder(root, classes=1), "has one class (class0): a classifier needs at least two"),
        (
            lambda root: (image_folder(root) / "train" / "class1" / "bad.png").write_bytes(b"not a png"),
            "bad.png is not",
        ),
        (
            lambda root: png_header(image_folder(root) / "val" / "class2" / "bomb.png", 100_000, 100_000),
            "bomb.png is not a readable image (DecompressionBombError: Image size (10000000000 pixels) exceeds",
        ),
        (lambda root: image_folder(root, per_class=1, val=False), "no image is held out to score the search"),
    ],
)
def test_folders_the_search_cannot_use_are_refused_before_training(
    make, message: str, table: str, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    make(root)
    out = tmp_path / "found.json"
    proc = lut(
        "search", "--space", str(TINY_SPACE), "--target-ms", "1", "--data", str(root), "--out", str(out), db=table
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not Path(f"{out}.ckpt").exists()  # before any epoch


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims `width` x `height` pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))


def test_an_image_truncated_after_its_header_stops_the_search_with_its_path(table: str, tmp_path: Path) -> None:
    from PIL import Image

    root = image_folder(tmp_path / "data")
    cut = root / "train" / "class0" / "cut.jpg"
    Image.fromarray(np.full((64, 64, 3), 99, np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.8)])  # the header reads, the pixels do not
    args = ["search", "--space", str(TINY_SPACE), "--target-ms", "1", "--data", str(root), "--epochs", "1"]
    args += ["--batch-size", "40", "--workers", "2", "--train-device", "cpu", "--no-measure"]
    proc = lut(*args, "--out", str(tmp_path / "found.json"), db=table)  # one batch holds every image
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "cut.jpg" in x]  # one sentence, from a loading process
    assert line == f"error: {cut} is not a readable image (OSError: Truncated File Read): fix or remove it."


def test_a_search_on_an_image_folder(table: str, tmp_path: Path) -> None:
    out = tmp_path / "found.json"
    args = ["search", "--space", str(TINY_SPACE), "--target-ms", "1", "--data", str(image_folder(tmp_path / "data"))]
    args += ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--train-device", "cpu", "--out", str(out)]
    proc = lut(*args, "--no-measure", "--json", db=table)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert out.is_file() and payload["plot"] == str(out.with_suffix(".png"))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # accuracy and latency over epochs
    assert "images/s" in proc.stderr and 0 <= payload["proxy_accuracy"] <= 1
    refused = lut(*args[:-2], "--train-device", "tpu", db=table)
    assert refused.returncode == 2 and "--train-device" in refused.stderr
    again = lut(*args, "--no-measure", db=table)  # resumed from its checkpoint, the search done: as a reader sees it
    assert again.returncode == 0, again.stderr
    check("search", masked(again.stdout, tmp_path))


def test_two_processes_under_torchrun_search_as_one_with_the_same_global_batch(table: str, tmp_path: Path) -> None:
    space, estimator = TINY_SEARCH_SPACE, Estimator("cpu", db=table)
    rows = ([0 for _ in space.dimensions], [n - 1 for _, n in space.dimensions])
    ends = [estimator.estimate(space.arch(space.point_from_row(row))) for row in rows]
    target = f"{sum(e.latency_ms for e in ends) / 2:.3f}"
    common = ["search", "--space", str(TINY_SPACE), "--target-ms", target, "--epochs", "4", "--images", "200"]
    common += ["--batch-size", "30", "--proxy-resolutions", "12", "--train-device", "cpu", "--no-measure"]
    one = lut(*common, "--out", str(tmp_path / "one.json"), db=table)  # warm-up 3 epochs, then one searching
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two_args = [*torchrun, "-m", "latency.cli", *common, "--out", str(tmp_path / "two.json"), "--db", table]
    env = {**os.environ, **QUICK, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(two_args, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # one process reports
    first, second = (torch.load(tmp_path / f"{n}.json.ckpt", weights_only=True) for n in ("one", "two"))
    assert first["epoch"] == second["epoch"] == 4
    assert all(logits.abs().sum() > 0 for logits in first["alphas"].values() if len(logits) > 1)  # they moved
    for name, logits in first["alphas"].items():  # and alike
        torch.testing.assert_close(second["alphas"][name], logits, atol=1e-4, rtol=1e-3)
    for name, weights in first["net"].items():
        torch.testing.assert_close(second["net"][name], weights, atol=1e-4, rtol=1e-3)
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    again = subprocess.run(two_args, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert again.returncode == 0 and f"resuming from {tmp_path / 'two.json'}.ckpt at epoch 4" in again.stderr
