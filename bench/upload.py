"""Benchmark: `ncloud dataset upload` of many small files and of larger ones, beside a plain
copy of the same folder to the same storage (the ceiling, two ways: `cp -r`, and `tar` over
a loopback TCP connection) and the one-file-per-request upload ncloud used before (the peer
it replaces), from one run on one machine.

    python -m bench.upload                 # 20,000 32x32 PNGs and 2,000 224x224 JPEGs
    python -m bench.upload --small 2000 --large 200

Targets (issue 17): small files at 1,000 files/s or more, for the whole command; large ones
at disk speed, taken here as at least half the plain `cp -r`'s MB/s for the transfer: the
whole command less its fixed cost (Python's start, the manifest's check on both sides, the
ingest call), which an upload of a one-file dataset measures in the same run. The share of
the loopback copy's MB/s is printed beside it. Each time is the median of three, after a
sync. Upload time is to the last file stored (the CLI's --no-wait) and synced to disk, as
the copies are; the ingest that follows is waited for, and timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # `python bench/upload.py` as well as `python -m bench.upload`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Server, private_server, verdict, wait_for
from bench.loader import generate
from ncloud.client import Client
from ncloud.uploads import manifest_files, upload_files

SMALL_TARGET_FILES_S = 1000.0
LARGE_TARGET_OF_COPY = 0.5
TENANT = "uploads"
PEER_FILES = 2000
BIG_MB = 64  # the per-file peer is slow: it sends the first files of the small set
REPEAT = 3


def folder_bytes(files: list[tuple[Path, str]]) -> int:
    return sum(p.stat().st_size for p, _ in files)


def cli_upload(server: Server, token: str, source: Path, name: str) -> tuple[float, float, int]:
    """(seconds, CPU seconds of the CLI, dataset id) of `ncloud dataset upload --no-wait`."""
    env = {**server.env, "NCLOUD_HOST": server.api_url, "NCLOUD_TOKEN": token}
    env["NCLOUD_TENANT"] = TENANT
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "dataset", "upload", str(source),
         "-n", name, "--no-wait", "-o", "json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    # to disk, as the copies are timed: what the upload wrote may still be in the page cache
    subprocess.run(["sync", "-f", str(server.home / "storage")], check=False)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The big files are random bytes: every one arrives, then their ingest fails at once.
    refused = "failed to ingest" in proc.stderr and source.name == "big"
    if proc.returncode != 0 and not refused:
        raise RuntimeError(f"upload of {source} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu, int(json.loads(proc.stdout)["id"])


def ingest_s(c: Client, dataset_id: int) -> float:
    started = time.perf_counter()

    def ready() -> bool | None:
        found = c.datasets.show(dataset_id)
        if found["status"] == "Error":
            raise RuntimeError(f"dataset {dataset_id} failed to ingest: {found['error']}")
        return True if found["status"] == "Ready" else None

    wait_for(ready, 1800, f"dataset {dataset_id} to be Ready", every=0.2)
    return time.perf_counter() - started


def big_files(root: Path, n: int) -> Path:
    """n files of 64 MB of random bytes and a manifest naming them (uploaded, not ingested)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["@FILE\t@ASCII_INT"]
    for i in range(n):
        with open(root / f"part-{i}.bin", "wb") as out:
            for _ in range(BIG_MB):
                out.write(os.urandom(1 << 20))
        lines.append(f"part-{i}.bin\t{i % 2}")
    (root / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return root


def synced(target: Path, copy: Callable[[], object]) -> float:
    """Seconds of copy() into target and its sync, after a sync; target removed after."""
    subprocess.run(["sync"], check=False)
    started = time.perf_counter()
    copy()
    subprocess.run(["sync", "-f", str(target)], check=False)
    took = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return took


def plain_copy(source: Path, storage: Path) -> float:
    """`cp -r` of the folder into the server's storage: the same bytes, nothing in the way."""
    target = storage / f"plain-copy-{source.name}"
    return synced(
        target, lambda: subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    )


def loopback_copy(source: Path, storage: Path) -> float:
    """`tar -c | a TCP connection on loopback | tar -x` of the folder into the server's
    storage: the bytes over a socket as an upload sends them, nothing of ours in the way
    (a relay thread copies the socket into `tar -x`; it moves GB/s)."""
    target = storage / f"loopback-{source.name}"
    target.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def copy() -> None:
            unpack = subprocess.Popen(["tar", "-x", "-C", str(target)], stdin=subprocess.PIPE)
            pack = subprocess.Popen(["tar", "-c", "-C", str(source), "."], stdout=subprocess.PIPE)

            def receive() -> None:
                assert unpack.stdin is not None
                conn, _ = listener.accept()
                with conn:
                    while data := conn.recv(1 << 20):
                        unpack.stdin.write(data)
                unpack.stdin.close()

            relay = threading.Thread(target=receive)
            relay.start()
            assert pack.stdout is not None
            with socket.create_connection(("127.0.0.1", port)) as out:
                while data := pack.stdout.read(1 << 20):
                    out.sendall(data)
            relay.join(timeout=600)
            if pack.wait(timeout=600) != 0 or unpack.wait(timeout=600) != 0:
                raise RuntimeError(f"the loopback copy of {source} failed")

        return synced(target, copy)


def per_file(c: Client, source: Path, n: int) -> float:
    """The upload as ncloud made it before: one PUT per file, 4 at a time."""
    header, *rows = (source / "manifest.tsv").read_text().splitlines()
    subset = source / "first.tsv"
    subset.write_text("\n".join([header, *rows[:n]]) + "\n")
    try:
        files, _ = manifest_files(subset)
        created = c.datasets.create("per-file", subset.read_bytes(), subset.name)
        ds = int(created["id"])
        started = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            from rich.console import Console

            from ncloud import uploads

            saved, uploads.err = uploads.err, Console(file=quiet)
            try:
                upload_files(
                    files, lambda name, chunks, size: c.datasets.put_file(ds, name, chunks, size)
                )
            finally:
                uploads.err = saved
        return time.perf_counter() - started
    finally:
        subset.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20000, help="32x32 PNGs")
    parser.add_argument("--large", type=int, default=2000, help="224x224 JPEGs")
    parser.add_argument("--big", type=int, default=4, help="files of 64 MB (streamed alone)")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="ncloud-upload-"))
    try:
        print(f"generating {args.small} PNGs and {args.large} JPEGs under {data} ...", flush=True)
        sets = {
            "small": generate(data / "small", args.small, 32, "png").parent,
            "large": generate(data / "large", args.large, 224, "jpg").parent,
            "big": big_files(data / "big", args.big),
        }
        with private_server() as server:
            admin = server.admin()
            admin.tenants.add(TENANT, 1, 0, "1GiB")
            token = str(admin.users.add(f"{TENANT}@example.com", [TENANT])["token"])
            c = Client(server.api_url, token=token, tenant=TENANT)
            storage = server.home / "storage"
            one = one_file(data / "one")
            fixed = statistics.median(
                cli_upload(server, token, one, f"one-{i}")[0] for i in range(3)
            )
            rows = []
            for label, source in sets.items():
                files, _ = manifest_files(source / "manifest.tsv")
                size = folder_bytes(files)
                # This disk's writeback makes any one time vary several-fold: the median of
                # REPEAT, each side after a sync.
                copies, loops, uploads, ingests = [], [], [], []
                for i in range(REPEAT):
                    copies.append(plain_copy(source, storage))
                    loops.append(loopback_copy(source, storage))
                    subprocess.run(["sync"], check=False)
                    took, cpu, ds = cli_upload(server, token, source, f"{label}-{i}")
                    uploads.append((took, cpu))
                    # waited for each time: an ingest must not run under the next upload
                    ingests.append(ingest_s(c, ds) if label != "big" else float("nan"))
                copy_s, loop_s = statistics.median(copies), statistics.median(loops)
                took, cpu = sorted(uploads)[len(uploads) // 2]
                ingest = statistics.median(ingests)
                rows.append((label, len(files), size, took, cpu, ingest, copy_s, loop_s))
            peer_s = per_file(c, sets["small"], min(PEER_FILES, args.small))
    finally:
        shutil.rmtree(data, ignore_errors=True)
    report(rows, peer_s, min(PEER_FILES, args.small), fixed)


def one_file(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "manifest.tsv").write_text("@FILE\t@ASCII_INT\na.png\t0\n")
    return root


Row = tuple[str, int, int, float, float, float, float, float]


def report(rows: list[Row], peer_s: float, peer_n: int, fixed: float) -> None:
    print(f"\nthe command's fixed cost (a one-file dataset, median of 3): {fixed:.2f} s")
    print(f"{'set':<6} {'files':>7} {'MB':>7} | {'ncloud s':>8} {'files/s':>8} {'MB/s':>7} "
          f"{'CLI CPU':>7} {'ingest s':>8} | {'transfer':>8} {'MB/s':>7} | {'cp -r s':>7} "
          f"{'MB/s':>7} {'of it':>6} | {'tar|tcp':>7} {'MB/s':>7} {'of it':>6}")  # fmt: skip
    for label, n, size, took, cpu, ingest, copy_s, loop_s in rows:
        mb, moving = size / 1e6, max(took - fixed, 1e-3)
        print(f"{label:<6} {n:>7,} {mb:>7.1f} | {took:>8.2f} {n / took:>8,.0f} {mb / took:>7.1f} "
              f"{cpu / took:>6.0%} {ingest:>8.2f} | {moving:>8.2f} {mb / moving:>7.1f} | "
              f"{copy_s:>7.2f} {mb / copy_s:>7.1f} {copy_s / moving:>6.0%} | "
              f"{loop_s:>7.2f} {mb / loop_s:>7.1f} {loop_s / moving:>6.0%}")  # fmt: skip
    small = next(r for r in rows if r[0] == "small")
    print(f"\nper-file PUTs (the upload before, 4 at a time), first {peer_n:,} small files: "
          f"{peer_s:.2f} s, {peer_n / peer_s:,.0f} files/s; ncloud now "
          f"{small[1] / small[3] / (peer_n / peer_s):.1f}x that")  # fmt: skip
    print(
        "(CLI CPU: the uploading CLI's own CPU time over its wall time; 2 cores are shared "
        "with the server. cp -r: the folder copied into the storage, then sync; tar|tcp: the "
        "same through a loopback TCP connection, tar -c to tar -x, then sync)"
    )
    rate = small[1] / small[3]
    print(f"target small files >= {SMALL_TARGET_FILES_S:,.0f}/s: {rate:,.0f}/s "
          f"{verdict(rate >= SMALL_TARGET_FILES_S)}")  # fmt: skip
    for label, _, _, took, _, _, copy_s, loop_s in rows:
        if label in ("large", "big"):
            moving = max(took - fixed, 1e-3)
            share = copy_s / moving
            print(f"target {label} files' transfer >= {LARGE_TARGET_OF_COPY:.0%} of the plain "
                  f"copy's MB/s: {share:.0%} {verdict(share >= LARGE_TARGET_OF_COPY)} "
                  f"(of the loopback copy's: {loop_s / moving:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
