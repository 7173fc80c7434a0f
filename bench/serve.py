"""Benchmark: one trained network served by the platform, by plain Ray Serve and bare, under load.

Targets, each at c=1, 8, 32 and 128 from one lean generator (bench/http_load.py: aiohttp,
bodies encoded once, its own CPU use printed): the platform's deployment through its front
(cluster/control/front.py), two plain Serve apps of the same net through Serve's own proxy
(one forward per request, and `@serve.batch`), and the ceiling: plain Starlette on uvicorn
with two workers (bench/ceiling.py), the same work with nothing of Ray's or ours in the way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/serve.py` as well as `python -m bench.serve`
    # Replace the script's folder (bench/) before anything imports `queue` or `serve` from it.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from PIL import Image

from bench.common import (
    ROOT,
    Server,
    free_port,
    median,
    private_server,
    ratio_interval,
    tenant_client,
    upload,
    verdict,
    wait_for,
)
from bench.http_load import Input, K, Level, Target, drive
from examples.digits import make_digits
from jobs.models.specs import build, parse_spec
from ncloud import responses

SPEC = ROOT / "examples" / "cnn.yaml"
TENANT = "bench-serve"
WARMUP = 20
SETTLE = 100  # requests per target at the highest concurrency before any round is timed
MAX_BATCH = 32  # the platform's defaults (serve/deployments/replica.py), given to the batched peer
BATCH_WAIT_S = 0.005
MAX_ONGOING = 256
# The targets (issue 16): at c=32, 2x the plain @serve.batch app's requests/s and half the
# ceiling's; at c=1 a p50 under 3 ms; at c=128 a p99 under 2x the p50; no errors anywhere.
PEER_TARGET, CEILING_TARGET, TARGET_C = 2.0, 0.5, 32
P50_MS_TARGET, TAIL_TARGET, TAIL_C = 3.0, 2.0, 128
PEERS = {"plain-unbatched": "/plain-unbatched", "plain-batched": "/plain-batched"}
CEILING = "uvicorn-ceiling"
CEILING_WORKERS = 2
TERMINAL = {"Completed", "Failed", "Stopped"}


class PlainNet:
    """The trained network as a bare torch model: PNG bytes in, top-k out (no platform code)."""

    def __init__(self, spec_text: str, meta: dict[str, Any], state: bytes) -> None:
        torch.set_num_threads(1)  # like a platform replica
        self.classes: list[str] | None = meta.get("classes")
        transform = meta.get("transform") or {}
        self.mean = float(transform.get("mean", 0.0))
        self.std = float(transform.get("std", 1.0))
        shape = tuple(int(d) for d in meta["input_shape"])
        built = build(parse_spec(SPEC.name, spec_text), int(meta["num_classes"]), shape)
        self.model = built.model
        self.model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        self.model.eval()

    def decode(self, data: bytes) -> torch.Tensor:
        """[1, 1, H, W]: grayscale pixels on the 0..1 scale, then (x - mean) / std."""
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("L"), dtype=np.float32)
        return ((torch.from_numpy(pixels) / 255.0 - self.mean) / self.std)[None, None]

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One forward for several decoded inputs; each one's probabilities."""
        return list(self.probabilities(torch.cat(inputs)))

    def top(self, probs: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        values, indexes = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [
                {"index": i, "label": self.classes[i] if self.classes else None, "probability": p}
                for p, i in zip(row_p, row_i, strict=True)
            ]
            for row_p, row_i in zip(values.tolist(), indexes.tolist(), strict=True)
        ]


def peer_apps(spec_text: str, meta: dict[str, Any], state: bytes) -> dict[str, Any]:
    """Two plain Serve applications of the same net: one forward per request, and batched."""
    from ray import serve
    from starlette.requests import Request

    options: dict[str, Any] = {
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0},  # the tenant's reservation holds the CPUs
        "max_ongoing_requests": MAX_ONGOING,
    }

    async def read_file(request: Request) -> tuple[str, bytes]:
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValueError("send the image as the multipart field 'file'")
        return str(upload.filename), await upload.read()

    @serve.deployment(name="unbatched", **options)
    class Unbatched:
        def __init__(self, spec_text: str, meta: dict[str, Any], state: bytes) -> None:
            from bench.serve import PlainNet  # by reference: torch does not pickle by value

            self.net = PlainNet(spec_text, meta, state)

        async def __call__(self, request: Request) -> dict[str, Any]:
            name, data = await read_file(request)
            k = int(request.query_params.get("k", K))
            top = self.net.top(self.net.probabilities(self.net.decode(data)), k)[0]
            return {"predictions": [{"input": name, "top": top}]}

    @serve.deployment(name="batched", **options)
    class Batched:
        def __init__(self, spec_text: str, meta: dict[str, Any], state: bytes) -> None:
            from bench.serve import PlainNet

            self.net = PlainNet(spec_text, meta, state)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
        async def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            return self.net.batch(inputs)

        async def __call__(self, request: Request) -> dict[str, Any]:
            name, data = await read_file(request)
            k = int(request.query_params.get("k", K))
            probs = await self.forward(self.net.decode(data))
            return {"predictions": [{"input": name, "top": self.net.top(probs[None], k)[0]}]}

    args = (spec_text, meta, state)
    return {
        "plain-unbatched": Unbatched.bind(*args),  # type: ignore[attr-defined]
        "plain-batched": Batched.bind(*args),  # type: ignore[attr-defined]
    }


# -- load ------------------------------------------------------------------------------


def floor_per_sample(net: PlainNet, inputs: list[Input], batch: int, seconds: float = 2.0) -> float:
    """Median seconds per sample of the bare forward (decoding excluded) at this batch size."""
    x = torch.cat([net.decode(inputs[i % len(inputs)].data) for i in range(batch)])
    net.probabilities(x)
    runs: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until or len(runs) < 5:
        started = time.perf_counter()
        net.probabilities(x)
        runs.append((time.perf_counter() - started) / batch)
    return median(runs)


# -- set-up ----------------------------------------------------------------------------


def read_inputs(data: Path, net: PlainNet) -> list[Input]:
    """The holdout and validation PNGs, each with the in-process net's top-1 answer."""
    inputs = []
    for split in ("holdout", "valid"):
        for path in sorted((data / split).glob("*.png")):
            raw = path.read_bytes()
            probs = net.probabilities(net.decode(raw))[0]
            two = probs.topk(2)
            clear = float(two.values[0] - two.values[1]) > 1e-3
            expected = int(two.indices[0]) if clear else None
            inputs.append(Input(f"{split}/{path.name}", raw, expected))
    return inputs


def train_and_deploy(
    server: Server, data: Path, spec_text: str, timeout_s: float
) -> dict[str, Any]:
    """A model trained (2 epochs) and deployed by the platform: its record, the deploy answer."""
    c = tenant_client(server.admin(), TENANT, 2)
    ds = upload(c, data / "train.tsv", "bench-serve-digits")
    model = c.models.train("bench-serve-cnn", SPEC.name, spec_text, ds, epochs=2, workers=1)
    model_id = int(model["id"])

    def trained() -> responses.ModelDetail | None:
        shown = c.models.show(model_id)
        return shown if shown["status"] in TERMINAL else None

    started = time.perf_counter()
    shown = wait_for(trained, timeout_s, f"model {model_id} to finish training", every=1.0)
    if shown["status"] != "Completed":
        raise RuntimeError(f"model {model_id} ended {shown['status']}: {shown.get('error')}")
    print(f"trained model {model_id} in {time.perf_counter() - started:.1f}s", flush=True)
    started = time.perf_counter()
    deployed = c.models.deploy(model_id, replicas=1)

    def up() -> responses.Deployment | None:
        dep = c.models.deployment(model_id)
        if dep["status"] == "Failed":
            raise RuntimeError(f"the deployment of model {model_id} failed: {dep.get('error')}")
        return dep if dep["status"] == "Deployed" else None

    wait_for(up, timeout_s, f"model {model_id} to be Deployed", every=0.5)
    print(f"platform deployment up in {time.perf_counter() - started:.1f}s", flush=True)
    return {"model": shown, "deploy": deployed}


def model_files(server: Server, model_id: int) -> tuple[dict[str, Any], bytes]:
    folder = server.home / "storage" / "tenants" / TENANT / "models" / str(model_id)
    if not (folder / "meta.json").exists() or not (folder / "model.pt").exists():
        raise RuntimeError(f"no meta.json and model.pt under {folder}")
    return json.loads((folder / "meta.json").read_text()), (folder / "model.pt").read_bytes()


def connect_ray(server: Server) -> Any:
    """A driver in the server's Ray cluster (auth settings first: Ray reads them on import)."""
    server.use_ray_env()
    import logging

    import ray
    from ray import serve  # noqa: F401  (imported here: it resets the level set below)

    ray.init(
        address=str(server.info["ray_address"]), logging_level=logging.WARNING, log_to_driver=False
    )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return ray


def settle(targets: list[Target], inputs: list[Input], concurrency: int, budget_s: float) -> None:
    """Untimed load on every target before the first round.

    Serve is still busy for a while after the peers are deployed (routes, health checks, first
    batches); without this, whichever target round 1 starts with pays for it.
    """
    started = time.perf_counter()
    for target in targets:
        level = drive(target, inputs, concurrency, SETTLE, budget_s)
        if level.errors:
            print(f"settling {target.name}: {len(level.errors)} errors, first: "
                  f"{level.errors[0]}", file=sys.stderr)  # fmt: skip
    print(f"settled: {SETTLE} untimed requests per target at c={concurrency} "
          f"in {time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip


def measure(
    target: Target, inputs: list[Input], concurrency: int, args: argparse.Namespace
) -> Level:
    """A warm-up, then `args.requests` requests at this concurrency."""
    warm = drive(target, inputs, concurrency, max(WARMUP, concurrency), args.budget)
    if warm.errors:
        print(f"warm-up {target.name} c={concurrency}: {len(warm.errors)} errors, "
              f"first: {warm.errors[0]}", file=sys.stderr)  # fmt: skip
    return drive(target, inputs, concurrency, args.requests, args.budget)


def serve_proxy(server: Server) -> str:
    """Serve's own proxy: its port of its own beside the front, or the API's when there is
    no front (then it has that port itself)."""
    return server.serve_url or server.api_url.removesuffix("/api/v1")


class Ceiling:
    """bench/ceiling.py under uvicorn, CEILING_WORKERS workers, on a loopback port."""

    def __init__(self, folder: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/predict"
        uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "bench.ceiling:app"]
        self.log = open(folder / "uvicorn.log", "ab")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [*uvicorn, "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(CEILING_WORKERS), "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, "BENCH_CEILING_DIR": str(folder)},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_up(self, timeout_s: float = 120) -> None:
        import httpx

        def up() -> bool | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the uvicorn ceiling exited {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(self.url, timeout=5)  # 422 without a file: it answers
                return True
            return None

        wait_for(up, timeout_s, "the uvicorn ceiling to answer", every=0.5)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)  # the workers are in its session
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
        self.log.close()


def start_ceiling(folder: Path, spec_text: str, meta: dict[str, Any], state: bytes) -> Ceiling:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC.name).write_text(spec_text)
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "model.pt").write_bytes(state)
    ceiling = Ceiling(folder)
    try:
        ceiling.wait_up()
    except BaseException:
        ceiling.stop()
        raise
    return ceiling


def run(args: argparse.Namespace, data: Path, spec_text: str) -> tuple[list[Level], float, float]:
    levels: list[Level] = []
    with private_server(cpus=2, keep=args.keep) as server:
        setup = train_and_deploy(server, data, spec_text, args.timeout)
        model_id = int(setup["model"]["id"])
        meta, state = model_files(server, model_id)
        net = PlainNet(spec_text, meta, state)
        inputs = read_inputs(data, net)
        url = str(setup["deploy"]["url"])
        token = str(setup["deploy"]["token"])
        ray = connect_ray(server)
        from ray import serve

        # The peers as a Ray user has them: through Serve's own proxy (the platform's front,
        # cluster/control/front.py, has it on a port of its own).
        base = serve_proxy(server)
        targets = [Target("platform", url, {"Authorization": f"Bearer {token}"})]
        targets += [Target(name, f"{base}{route}", {}) for name, route in PEERS.items()]
        deployed: list[str] = []
        ceiling: Ceiling | None = None
        try:
            ceiling = start_ceiling(server.home / "bench-ceiling", spec_text, meta, state)
            targets.append(Target(CEILING, ceiling.url, {}))
            started = time.perf_counter()
            for name, app in peer_apps(spec_text, meta, state).items():
                serve.run(app, name=name, route_prefix=PEERS[name])
                deployed.append(name)
            print(f"plain Serve peers up in {time.perf_counter() - started:.1f}s", flush=True)
            print(f"{len(inputs)} PNGs ({sum(i.expected is None for i in inputs)} near-ties "
                  f"not checked); {args.requests} requests per target, level and round; "
                  f"{args.rounds} rounds, pooled", flush=True)  # fmt: skip
            settle(targets, inputs, max(args.concurrency), args.budget)
            for concurrency in args.concurrency:
                pooled = {t.name: Level(t.name, concurrency, elapsed=0.0) for t in targets}
                for r in range(args.rounds):
                    # Each round starts with another target, so none always goes first.
                    for target in targets[r % len(targets) :] + targets[: r % len(targets)]:
                        level = measure(target, inputs, concurrency, args)
                        pooled[target.name].add(level)
                        print(f"  round {r + 1}  {target.name:<16} c={concurrency:<3} "
                              f"{level.rps:8.1f} req/s  p50 {level.pct(50):7.2f} ms  "
                              f"p99 {level.pct(99):7.2f} ms  errors {len(level.errors)}",
                              flush=True)  # fmt: skip
                levels.extend(pooled.values())
        finally:
            if ceiling is not None:
                ceiling.stop()
            for name in deployed:
                try:
                    serve.delete(name)
                except Exception as exc:
                    print(f"warning: could not delete Serve app {name}: {exc}", file=sys.stderr)
            ray.shutdown()
    # The floor is measured with the server gone, so nothing else competes for the CPU.
    return levels, floor_per_sample(net, inputs, 1), floor_per_sample(net, inputs, MAX_BATCH)


def report(levels: list[Level], floor1: float, floor32: float) -> int:
    """The table, the ratios and their verdicts; the exit status (1 when anything errored)."""
    print(f"\n{'target':<16} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
          f" {'gen CPU':>8}")  # fmt: skip
    for lv in levels:
        gen = lv.generator_cpu_s / lv.elapsed
        print(f"{lv.target:<16} {lv.concurrency:>4} {lv.rps:>8.1f} {lv.pct(50):>8.2f} "
              f"{lv.pct(99):>8.2f} {len(lv.errors):>6} {gen:>8.0%}")  # fmt: skip
    print(f"floor: bare forward {floor1 * 1e3:.3f} ms/sample at batch 1, "
          f"{floor32 * 1e3:.3f} ms/sample at batch {MAX_BATCH} "
          f"(= {1 / floor1:.0f} and {1 / floor32:.0f} samples/s on one thread)")  # fmt: skip
    print("gen CPU: the load generator's own CPU time over the level's wall time (of one core)")
    print(f"peers: plain Serve through its own proxy; {CEILING}: plain Starlette on uvicorn, "
          f"{CEILING_WORKERS} workers, the same forward, no Ray")  # fmt: skip
    by = {(lv.target, lv.concurrency): lv for lv in levels}
    print("\nratios platform / peer (req/s, p50, p99):")
    for c in sorted({lv.concurrency for lv in levels}):
        p = by[("platform", c)]
        parts = [
            f"{peer}: {p.rps / q.rps:.2f}, {p.pct(50) / q.pct(50):.2f}, {p.pct(99) / q.pct(99):.2f}"
            for peer in (*PEERS, CEILING)
            if (q := by.get((peer, c)))
        ]
        print(f"  c={c:<3} " + "; ".join(parts))
    verdicts = []
    if ("platform", TARGET_C) in by:
        p, batched, ceiling = (by[(t, TARGET_C)] for t in ("platform", "plain-batched", CEILING))
        each = [a / b for a, b in zip(p.round_rps, batched.round_rps, strict=True)]
        mean, low, high = ratio_interval(each)
        print(f"c={TARGET_C} platform / plain-batched, each round: "
              + ", ".join(f"{r:.2f}" for r in each)
              + f" (geometric mean {mean:.2f}, 95% CI {low:.2f}-{high:.2f})")  # fmt: skip
        peer, top = p.rps / batched.rps, p.rps / ceiling.rps
        verdicts += [
            (f"c={TARGET_C} req/s platform / plain-batched = {peer:.2f}", f">= {PEER_TARGET:g}",
             peer >= PEER_TARGET),
            (f"c={TARGET_C} req/s platform / {CEILING} = {top:.2f}", f">= {CEILING_TARGET:g}",
             top >= CEILING_TARGET),
        ]  # fmt: skip
    if ("platform", 1) in by:
        p50 = by[("platform", 1)].pct(50)
        verdicts.append((f"c=1 platform p50 = {p50:.2f} ms", f"< {P50_MS_TARGET:g} ms",
                         p50 < P50_MS_TARGET))  # fmt: skip
    if ("platform", TAIL_C) in by:
        lv = by[("platform", TAIL_C)]
        tail = lv.pct(99) / lv.pct(50)
        verdicts.append((f"c={TAIL_C} platform p99 / p50 = {tail:.2f}", f"< {TAIL_TARGET:g}",
                         tail < TAIL_TARGET))  # fmt: skip
    failed = [lv for lv in levels if lv.errors]
    for lv in failed:
        print(f"error: {lv.target} c={lv.concurrency}: {len(lv.errors)} errors; first: "
              f"{lv.errors[0]}", file=sys.stderr)  # fmt: skip
    verdicts.append((f"errors: {sum(len(lv.errors) for lv in levels)} in all", "0", not failed))
    print()
    for what, target, met in verdicts:
        print(f"{what} (target {target}): {verdict(met)}")
    missing = {TARGET_C, 1, TAIL_C} - {lv.concurrency for lv in levels}
    if missing:
        print(f"not run: c={sorted(missing)} (add them to --concurrency for every target)")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="requests per target and level")
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated levels")
    parser.add_argument(
        "--rounds", type=int, default=6, help="rounds per level, targets interleaved; pooled"
    )
    parser.add_argument("--budget", type=float, default=300, help="seconds at most per level")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to train or deploy")
    parser.add_argument("--keep", action="store_true", help="keep the server's NCLOUD_HOME")
    args = parser.parse_args()
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--concurrency must be whole numbers like 1,8,32, not {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1 or max(args.concurrency) > 256:
        parser.error("--concurrency levels must be between 1 and 256")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 1 <= args.requests <= 10_000:
        parser.error("--requests must be between 1 and 10000")
    spec_text = SPEC.read_text()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        data = Path(tmp) / "digits"
        make_digits(data)
        levels, floor1, floor32 = run(args, data, spec_text)
    raise SystemExit(report(levels, floor1, floor32))


if __name__ == "__main__":
    main()
