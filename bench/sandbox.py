"""What the sandbox costs: start, a job in a fresh or a recycled one, a forward pass.

Each is measured sandboxed (bubblewrap, as the server runs tenant code) and unsandboxed
(the same entry process with --single-tenant, or the same work in this process), in one
run, on one trained network, and printed with the ratios. No server is needed:
`python -m bench.sandbox [--repeat 5 --forwards 300]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from examples.digits import make_digits
from jobs.datasets.ingest import ingest_local
from jobs.models.predictor import read_meta
from jobs.models.specs import build, check, parse_spec
from jobs.sandbox.launch import Sandbox, new_slot
from jobs.sandbox.network import SandboxedNetwork
from jobs.sandbox.policy import Policy
from jobs.sandbox.pool import WarmPool
from jobs.training.trainer import TrainConfig, train
from ncloud.manifest import read_manifest
from ncloud.settings import settings

ROOT = Path(__file__).resolve().parent.parent
CNN = (ROOT / "examples" / "cnn.yaml").read_text()


class _Quiet:
    def log(self, line: str) -> None: ...
    def progress(self, *args: object) -> None: ...
    def epoch(self, metrics: dict[str, object]) -> None: ...
    def checkpoint(self, index: dict[str, object]) -> None: ...


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median seconds of fn over `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def check_box(single_tenant: bool) -> Sandbox:
    return Sandbox("check", Policy(new_slot("bench"), 1, volumes=(), single_tenant=single_tenant))


def start_to_ready(single_tenant: bool) -> Sandbox:
    box = check_box(single_tenant)
    box.start().wait_ready()
    return box


def handoff(box: Sandbox) -> None:
    """A job to a started sandbox, to its answer: what a run or check waits for when warm."""
    spec = {"name": "m.yaml", "text": CNN, "num_classes": 10, "input_shape": [1, 8, 8]}
    box.begin(spec, 1)
    frame = box.recv(60)
    if frame is None or "ok" not in frame[0]:
        raise SystemExit(f"the check failed: {frame}")
    box.close()


def recycled(single_tenant: bool, repeat: int) -> tuple[float, float]:
    """The same tenant's next check in its recycled sandbox: the job (a fresh fork of the
    entry) to its answer, and the recycle after it (kill what is left, empty, reset)."""
    pool = WarmPool(lambda: check_box(single_tenant), keep=1, ahead=False)
    spec = {"name": "m.yaml", "text": CNN, "num_classes": 10, "input_shape": [1, 8, 8]}
    jobs, resets = [], []
    try:
        for _ in range(repeat + 1):  # the first one is the fresh sandbox's
            box = pool.take(1)
            started = time.perf_counter()
            box.begin(spec, 1)
            frame = box.recv(60)
            if frame is None or "ok" not in frame[0]:
                raise SystemExit(f"the check failed: {frame}")
            jobs.append(time.perf_counter() - started)
            started = time.perf_counter()
            pool.give_back(box, 1)
            resets.append(time.perf_counter() - started)
            if 1 not in pool.kept:
                raise SystemExit("the sandbox could not be recycled")
    finally:
        pool.close()
    return statistics.median(jobs[1:]), statistics.median(resets)


def trained_model(root: Path) -> str:
    make_digits(root / "files", size=8)
    ingest_local(read_manifest(str(root / "files" / "train.tsv")), str(root / "train"), 1 << 20)
    cfg = TrainConfig("cnn.yaml", CNN, str(root / "train"), epochs=1, run_url=str(root / "run"))
    train(cfg, _Quiet())
    return str(root / "run")


def _cold_start(single: bool) -> None:
    start_to_ready(single).close()


def _handoff_next(boxes: list[Sandbox]) -> None:
    handoff(boxes.pop())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=5, help="starts and checks per variant")
    p.add_argument("--forwards", type=int, default=300, help="forward passes per batch size")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NCLOUD_HOME"] = str(Path(tmp) / "home")
        settings.cache_clear()
        print(
            "sandbox start (bwrap + interpreter + torch import, to ready), median of", args.repeat
        )
        cold = {}
        for single in (False, True):
            cold[single] = timed(partial(_cold_start, single), args.repeat)
        print(f"  sandboxed {cold[False]:.3f} s   unsandboxed {cold[True]:.3f} s   "
              f"ratio {cold[False] / cold[True]:.2f}x")  # fmt: skip

        warm = {}
        for single in (False, True):
            boxes = [start_to_ready(single) for _ in range(args.repeat)]
            warm[single] = timed(partial(_handoff_next, boxes), args.repeat)
        spec = parse_spec("cnn.yaml", CNN)
        bare = timed(lambda: check(spec, 10, (1, 8, 8)), args.repeat)
        print("a spec check handed to a started sandbox (what a submit waits for), median")
        print(f"  sandboxed {warm[False] * 1e3:.1f} ms   unsandboxed child "
              f"{warm[True] * 1e3:.1f} ms   in this process {bare * 1e3:.1f} ms")  # fmt: skip
        again = {single: recycled(single, args.repeat) for single in (False, True)}
        print("the same tenant's next check, in its recycled sandbox (a fork), median")
        (job, reset), (job1, reset1) = again[False], again[True]
        print(f"  sandboxed {job * 1e3:.1f} ms (+ {reset * 1e3:.1f} ms to recycle after)   "
              f"unsandboxed child {job1 * 1e3:.1f} ms (+ {reset1 * 1e3:.1f} ms)   "
              f"in this process {bare * 1e3:.1f} ms")  # fmt: skip

        run_url = trained_model(Path(tmp))
        meta = read_meta(run_url)
        model = build(spec, 10, (1, 8, 8)).model.eval()
        model.load_state_dict(torch.load(f"{run_url}/model.pt", weights_only=True))
        print("a forward pass of the CNN (per batch, median of", args.forwards, "calls)")
        for batch in (1, 32):
            x = torch.from_numpy(np.random.default_rng(0).random((batch, 1, 8, 8), np.float32))
            nets = {}
            for single in (False, True):
                os.environ["NCLOUD_SINGLE_TENANT"] = "1" if single else "0"
                settings.cache_clear()
                nets[single] = SandboxedNetwork(run_url, ("cnn.yaml", CNN), meta, None, 1)
            with torch.no_grad():
                local = timed(partial(model, x), args.forwards)
            times = {s: timed(partial(n, x), args.forwards) for s, n in nets.items()}
            for n in nets.values():
                n.close()
            extra = (times[False] - local) * 1e3
            print(f"  batch {batch:2d}: sandboxed {times[False] * 1e3:.3f} ms   unsandboxed "
                  f"child {times[True] * 1e3:.3f} ms   in-process {local * 1e3:.3f} ms   "
                  f"(the sandbox adds {extra:.3f} ms per batch)")  # fmt: skip
        os.environ.pop("NCLOUD_SINGLE_TENANT", None)


if __name__ == "__main__":
    main()
