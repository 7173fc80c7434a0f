"""ShardLoader partitioning, shuffling, streaming and the batch transforms."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from jobs.datasets.loader import THREAD_PREFIX, ShardLoader, rank_pieces
from jobs.datasets.shards import ShardWriter
from jobs.datasets.transforms import build_transform
from ncloud.errors import InvalidInput, NotFound


def image_dataset(url: str, rows: int, shard_rows: int = 64, size: int = 4) -> str:
    """Images whose every pixel and label is the row number, so batches can be traced."""
    with ShardWriter(url, "image", None, rows_per_shard=shard_rows) as writer:
        for i in range(rows):
            writer.add(
                np.full((size, size, 3), i % 256, np.uint8).tobytes(), [size] * 2 + [3], i, i
            )
    return url


@pytest.fixture(scope="module")
def images() -> str:
    return image_dataset(f"memory://loader-{uuid.uuid4().hex}", 1000)


def labels(loader: ShardLoader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_ranks_are_disjoint_equal_and_cover_the_dataset(images: str) -> None:
    seen: list[int] = []
    for rank in range(4):
        loader = ShardLoader(images, rank, 4, batch_size=32, shuffle_seed=7, epoch=3)
        got = labels(loader)
        assert len(got) == 250 and len(loader) == 8
        seen += got
    assert sorted(seen) == list(range(1000))


def test_uneven_rows_wrap_around_so_every_rank_takes_the_same_steps() -> None:
    url = image_dataset(f"memory://uneven-{uuid.uuid4().hex}", 1001, shard_rows=100)
    per_rank = [labels(ShardLoader(url, r, 4, batch_size=50, shuffle_seed=1)) for r in range(4)]
    assert [len(p) for p in per_rank] == [251] * 4
    counts = Counter(v for p in per_rank for v in p)
    assert set(counts) == set(range(1001)) and sum(c - 1 for c in counts.values()) == 3
    assert [len(ShardLoader(url, r, 4, batch_size=50, drop_last=True)) for r in range(4)] == [5] * 4
    assert sum(len(y) for _, y in ShardLoader(url, 0, 4, batch_size=50, drop_last=True)) == 250


def test_rank_pieces_partition_shards_by_seed_and_epoch() -> None:
    rows = [10, 3, 0, 7]
    for seed, epoch in [(None, 0), (1, 0), (1, 1)]:
        pieces = [rank_pieces(rows, r, 3, seed, epoch) for r in range(3)]
        sizes = [sum(b - a for _, a, b in p) for p in pieces]
        assert sizes == [7, 7, 7]
    assert rank_pieces(rows, 0, 1, None, 0) == [(0, 0, 10), (1, 0, 3), (3, 0, 7)]
    assert rank_pieces(rows, 0, 1, 5, 0) != rank_pieces(rows, 0, 1, 5, 1)
    tiny = [rank_pieces([2], r, 5, None, 0) for r in range(5)]  # more ranks than rows
    assert tiny == [[(0, 0, 1)], [(0, 1, 2)], [(0, 0, 1)], [(0, 1, 2)], [(0, 0, 1)]]


def test_shuffle_is_deterministic_per_seed_and_epoch(images: str) -> None:
    def order(seed: int | None, epoch: int) -> list[int]:
        return labels(ShardLoader(images, 0, 2, batch_size=64, shuffle_seed=seed, epoch=epoch))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert order(None, 0) == list(range(500))
    loader = ShardLoader(images, 0, 1, batch_size=64, shuffle_seed=1)
    first = labels(loader)
    loader.set_epoch(1)
    assert labels(loader) != first and sorted(labels(loader)) == list(range(1000))


def test_pixels_travel_with_their_labels_and_are_normalised(images: str) -> None:
    spec = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
    for x, y in ShardLoader(images, batch_size=100, shuffle_seed=3, transform=spec):
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, 4, 4)
        want = ((y % 256).float() / 255 - 0.5)[:, None] / torch.tensor([0.25, 0.5, 1.0])
        assert torch.allclose(x[:, :, 2, 1], want, atol=1e-5)


def test_a_dataset_larger_than_the_buffer_streams(images: str, tmp_path: Path) -> None:
    loader = ShardLoader(
        images, batch_size=16, shuffle_seed=0, buffer_bytes=2000, cache_dir=tmp_path, prefetch=1
    )
    assert sorted(labels(loader)) == list(range(1000))
    dataset_bytes = 1000 * 48
    assert 2000 <= loader.peak_buffer_bytes <= 2000 + 64 * 48 < dataset_bytes
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 16  # cached as it went


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_stopping_early_ends_the_threads(images: str) -> None:
    # Only the loader's own threads: others in the test process come and go on their own.
    before = set(_loader_threads())
    for _ in ShardLoader(images, batch_size=8, shuffle_seed=0, prefetch=1):
        assert len(set(_loader_threads()) - before) == 2
        break
    assert set(_loader_threads()) <= before


def test_a_missing_shard_is_reported(tmp_path: Path) -> None:
    url = image_dataset(str(tmp_path / "ds"), 100, shard_rows=50)
    (tmp_path / "ds" / "shards" / "part-00001.parquet").unlink()
    with pytest.raises(NotFound, match="part-00001"):
        list(ShardLoader(url, batch_size=10))
    with pytest.raises(InvalidInput):
        ShardLoader(url, rank=2, world_size=2)


@pytest.mark.parametrize("train", [False, True])
def test_image_transform_shapes(train: bool) -> None:
    x = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), np.uint8)
    spec = {"resize": [8, 8], "crop": 6, "pad": 2, "flip": True}
    out = build_transform(spec, train)(x)
    assert out.shape == (6, 3, 6, 6) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    mirrored = build_transform({"flip": True}, train=True)(x, np.random.default_rng(1)) * 255
    for i in range(6):
        image = torch.from_numpy(x[i]).permute(2, 0, 1).float()
        assert torch.allclose(mirrored[i], image) or torch.allclose(mirrored[i], image.flip(-1))
    centre = build_transform({"crop": [4, 6]}, train=False)(x) * 255
    assert torch.allclose(centre[0], torch.from_numpy(x[0, 3:7, 3:9]).permute(2, 0, 1).float())
    mixed = [x[0], x[1, :7, :5]]
    assert build_transform({"resize": 5}, train)(mixed).shape == (2, 3, 5, 5)
    with pytest.raises(InvalidInput):
        build_transform({"resize": 5, "rotate": 9}, train)


def test_text_audio_and_feature_transforms() -> None:
    text = build_transform({"length": 4}, False, kind="text")
    out = text([np.frombuffer(b"hi", np.uint8), np.frombuffer(b"hello", np.uint8)])
    assert out.dtype == torch.int64 and out.tolist() == [[104, 105, 0, 0], [104, 101, 108, 108]]
    audio = build_transform({"length": 3}, False, kind="audio")
    clip = np.array([[16384, -32768], [0, 0]], np.int16)
    out = audio([clip])
    assert out.shape == (1, 2, 3) and out[0, :, 0].tolist() == [0.5, -1.0]
    assert build_transform(None, False, kind="audio")(clip[None]).shape == (1, 2, 2)
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert torch.equal(
        build_transform({}, False, kind="features")(features), torch.arange(6.0).view(2, 3)
    )


def test_features_and_text_datasets_load() -> None:
    url = f"memory://feat-{uuid.uuid4().hex}"
    with ShardWriter(url, "features", None) as writer:
        for i in range(10):
            writer.add(np.full(5, i, np.float32).tobytes(), [5], -1, i)
    x, y = next(iter(ShardLoader(url, batch_size=10)))
    assert (
        x.shape == (10, 5) and torch.equal(x[:, 0], torch.arange(10.0)) and set(y.tolist()) == {-1}
    )
    url = f"memory://text-{uuid.uuid4().hex}"
    with ShardWriter(url, "text", ["a", "b"]) as writer:
        for i, word in enumerate(["a", "bb", "ccc"]):
            writer.add(word.encode(), [len(word)], i % 2, i)
    x, y = next(iter(ShardLoader(url, batch_size=3, transform={"length": 2})))
    assert x.tolist() == [[97, 0], [98, 98], [99, 99]] and y.tolist() == [0, 1, 0]
    assert fsspec.filesystem("memory").exists(url.removeprefix("memory://") + "/index.json")


def test_rows_split_off_a_disjoint_hold_out_before_ranks_and_shuffling(images: str) -> None:
    held = labels(ShardLoader(images, batch_size=64, rows=(0.8, 1.0)))
    assert held == list(range(800, 1000))  # the index order, unshuffled
    kept = [labels(ShardLoader(images, r, 3, 64, shuffle_seed=5, rows=(0, 0.8))) for r in range(3)]
    assert [len(k) for k in kept] == [267] * 3  # 800 rows wrap to equal shares
    assert set().union(*map(set, kept)) == set(range(800))
    assert kept[0] != sorted(kept[0])
    loader = ShardLoader(images, 0, 2, batch_size=50, rows=(0.25, 0.5))
    assert loader.rows == 250 and len(loader) == 3
    for bad in [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.5)]:
        with pytest.raises(InvalidInput, match="fractions"):
            ShardLoader(images, rows=bad)
