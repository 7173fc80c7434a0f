"""Deploy and predict on Ray Serve: top-k with labels, auth, and every bad input (a clear 4xx)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.digits import make_digits
from ncloud.client import Client
from ncloud.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from tests.integration.conftest import Server, upload_dataset, wait_for
from tests.integration.serving import (
    ROOT,
    deployed,
    features_manifest,
    png_image,
    post,
    predict_url,
    trained,
)


@pytest.fixture(scope="module")
def shop(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tenant (2 bundles) with an image CNN and a features MLP, both trained and deployed."""
    data = tmp_path_factory.mktemp("deploy-digits")
    make_digits(data, size=16)
    admin = server.client()
    admin.tenants.add("shop", 2, 0, "2GiB")
    user = admin.users.add("sol@example.com", ["shop"])
    client = server.client(token=user["token"], tenant="shop")
    try:
        images = upload_dataset(server, data / "valid.tsv", "images", user["token"], "shop")
        features = client.datasets.create("features", features_manifest(), "f.tsv")["id"]
        client.datasets.ingest(features)
        wait_for(lambda: client.datasets.show(features)["status"] == "Ready", 120, "features")
        cnn = trained(client, "cnn", "cnn.yaml", images, epochs=8)
        mlp = trained(client, "mlp", "features.yaml", features, epochs=3)
        image_dep = deployed(client, cnn)
        feature_dep = deployed(client, mlp)
        yield {
            "token": user["token"],
            "client": client,
            "data": data,
            "cnn": cnn,
            "mlp": mlp,
            "image_dep": image_dep,
            "feature_dep": feature_dep,
            "images": images,
        }
    finally:
        for model in client.models.list():
            if model.get("deployment") in ("Deployed", "Deploying"):
                client.models.undeploy(model["id"])
        admin.users.remove("sol@example.com")
        admin.tenants.remove("shop", force=True)


def test_predict_top5_with_labels_through_the_cli_and_curl(
    server: Server, shop: dict[str, Any]
) -> None:
    holdout = shop["data"] / "holdout"
    names = sorted(holdout.iterdir())[:3]
    out = server.cli(
        "model",
        "predict",
        str(shop["cnn"]),
        *map(str, names),
        "-o",
        "json",
        token=shop["token"],
        tenant="shop",
    )
    found = json.loads(out.stdout)["predictions"]
    assert [p["input"] for p in found] == [n.name for n in names]
    labels = dict(
        line.split("\t") for line in (shop["data"] / "holdout.tsv").read_text().splitlines()[1:]
    )
    right = 0
    for item, path in zip(found, names, strict=True):
        top = item["top"]
        assert len(top) == 5 and [t["probability"] for t in top] == sorted(
            (t["probability"] for t in top), reverse=True
        )
        assert all(t["label"] for t in top) and 0.99 < sum(t["probability"] for t in top) <= 1.0001
        right += top[0]["label"] == labels[f"holdout/{path.name}"]
    assert right >= 2
    table = server.cli(
        "model",
        "predict",
        str(shop["cnn"]),
        str(names[0]),
        "-k",
        "2",
        token=shop["token"],
        tenant="shop",
    )
    assert "PROBABILITY" in table.stdout and names[0].name in table.stdout
    # The deployment's own token, as curl would send it; k larger than the classes is clamped.
    reply = post(
        server,
        shop["cnn"],
        shop["image_dep"]["token"],
        files=[("file", ("a.png", names[0].read_bytes()))],
        params={"k": 50},
    )
    assert reply.status_code == 200 and len(reply.json()["predictions"][0]["top"]) == 10
    raw = post(
        server,
        shop["cnn"],
        shop["token"],
        files=[("file", ("a.png", names[0].read_bytes()))],
        params={"raw": True},
    )
    assert raw.json()["predictions"][0]["shape"] == [10]
    raw_cli = server.cli(
        "model", "predict", str(shop["cnn"]), str(names[0]), "--raw", token=shop["token"],
        tenant="shop",
    )  # fmt: skip
    output = json.loads(raw_cli.stdout)["predictions"][0]
    assert output["shape"] == [10] and abs(sum(output["output"]) - 1) < 1e-4


def test_a_deployment_counts_the_requests_it_answered(server: Server, shop: dict[str, Any]) -> None:
    client = server.client(token=shop["token"], tenant="shop")

    def served() -> int:
        return client.models.deployment(shop["cnn"])["served"]

    def settled() -> int | None:
        """The count once a health check (5 s) has passed with nothing new to write."""
        first = served()
        time.sleep(6)
        return first if served() == first else None

    before = wait_for(lambda: (n := settled()) is not None and (n,), 60, "a settled count")[0]
    image = sorted((shop["data"] / "holdout").iterdir())[0].read_bytes()
    token = shop["image_dep"]["token"]
    for _ in range(3):
        ok = post(server, shop["cnn"], token, files=[("file", ("a.png", image))])
        assert ok.status_code == 200, ok.text
    bad = post(server, shop["cnn"], token, files=[("file", ("a.png", b"not a png"))])
    assert bad.status_code == 422  # not served: not counted
    wait_for(lambda: served() == before + 3, 60, "the replica to count its 3 answers")
    assert settled() == before + 3  # and no more: the 422 is not counted


def test_json_features_predict_and_wrong_length_is_422(
    server: Server, shop: dict[str, Any]
) -> None:
    from sklearn.datasets import load_digits

    x = (load_digits().data[500] / 16).round(3).tolist()
    ok = post(server, shop["mlp"], shop["token"], files=[("file", ("x.json", json.dumps(x)))])
    assert ok.status_code == 200 and ok.json()["predictions"][0]["top"][0]["label"] is None
    bad = post(server, shop["mlp"], shop["token"], files=[("file", ("x.json", "[1, 2, 3]"))])
    assert bad.status_code == 422 and "has 3 features; the model takes 64" in bad.json()["message"]


@pytest.mark.parametrize(
    ("files", "params", "status", "match"),
    [
        ([("file", ("t.png", png_image(16, 16)[:40]))], {}, 422, "t.png"),
        ([("file", ("n.png", b"this is text, not an image"))], {}, 422, "n.png"),
        ([("file", ("big.png", png_image(12000, 9000)))], {}, 422, "pixel|bomb|limit"),
        ([("file", ("a.png", png_image(16, 16)))], {"k": 0}, 422, "k must be at least 1"),
        ([("file", ("a.png", png_image(16, 16)))], {"k": -3}, 422, "k must be at least 1"),
        ([("file", ("a.png", png_image(16, 16)))], {"k": "five"}, 422, "k must be an integer"),
        (None, {}, 422, "empty"),
    ],
)
def test_bad_inputs_are_4xx_and_the_endpoint_stays_up(
    server: Server,
    shop: dict[str, Any],
    files: Any,
    params: dict[str, Any],
    status: int,
    match: str,
) -> None:
    import re

    reply = post(server, shop["cnn"], shop["token"], files=files, params=params)
    assert reply.status_code == status and re.search(match, reply.json()["message"])
    good = post(server, shop["cnn"], shop["token"], files=[("file", ("ok.png", png_image(16, 16)))])
    assert good.status_code == 200


def test_routes_other_than_predict_and_info(server: Server, shop: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {shop['token']}"}
    base = predict_url(server, shop["cnn"]).removesuffix("/predict")
    info = httpx.get(base, headers=headers, timeout=60)
    assert info.status_code == 200 and info.json()["num_classes"] == 10
    assert len(info.json()["classes"]) == 10 and "seven" in info.json()["classes"]
    wrong = httpx.get(f"{base}/predict", headers=headers, timeout=60)
    assert wrong.status_code == 405 and "POST" in wrong.json()["message"]
    missing = httpx.post(f"{base}/nothing", headers=headers, timeout=60)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert httpx.get(base, timeout=60).status_code == 401


def test_a_body_over_the_limit_is_413_without_reading_it(
    server: Server, shop: dict[str, Any]
) -> None:
    port = int(server.api_url.rsplit(":", 1)[1].split("/")[0])
    request = (
        f"POST /models/{shop['cnn']}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {shop['token']}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {1 << 30}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413")


@pytest.mark.parametrize(
    ("body", "kind", "status", "match"),
    [
        (None, "files", 413, "over 256 files in one request; this deployment takes at most 256"),
        (None, "fields", 413, "form fields are limited to 16"),
        (b"--x\r\nno headers here", "boundary=x", 422, "does not parse|empty"),
        (b"anything", "", 422, "does not parse"),
    ],
)
def test_multipart_parts_and_fields_are_capped_as_they_parse(
    server: Server, shop: dict[str, Any], body: bytes | None, kind: str, status: int, match: str
) -> None:
    import re

    if kind == "files":  # one over the deployment's --max-queue (256 by default)
        reply = post(server, shop["cnn"], shop["token"], files=[("file", ("e.json", b"[]"))] * 257)
    elif kind == "fields":
        fields = {f"f{i}": "v" for i in range(17)}  # with a file, so the body is multipart
        png = [("file", ("a.png", png_image(16, 16)))]
        reply = post(server, shop["cnn"], shop["token"], data=fields, files=png)
    else:
        content_type = f"multipart/form-data; {kind}".rstrip("; ")
        reply = post(
            server, shop["cnn"], shop["token"], content=body,
            headers={"Content-Type": content_type},
        )  # fmt: skip
    assert reply.status_code == status and re.search(match, reply.json()["message"]), reply.text
    good = post(server, shop["cnn"], shop["token"], files=[("file", ("ok.png", png_image(16, 16)))])
    assert good.status_code == 200


def test_a_replica_throttles_failed_authentication_but_not_a_token_it_knows(
    server: Server, shop: dict[str, Any]
) -> None:
    limit = int(server.env["NCLOUD_AUTH_FAILURES_PER_MINUTE"])
    url, png = predict_url(server, shop["cnn"]), [("file", ("a.png", png_image(16, 16)))]
    transport = httpx.HTTPTransport(local_address="127.0.0.12")  # this test's own address
    with httpx.Client(transport=transport, timeout=60) as flood:
        good = {"Authorization": f"Bearer {shop['token']}"}
        assert flood.post(url, headers=good, files=png).status_code == 200
        codes = [
            flood.post(url, headers={"Authorization": f"Bearer nc_g{i}_x"}, files=png).status_code
            for i in range(limit + 2)
        ]
        assert codes == [401] * limit + [429] * 2
        refused = flood.post(url, headers={"Authorization": "Bearer nc_g_x"}, files=png)
        assert refused.json()["code"] == "too_many_requests" and refused.headers["Retry-After"]
        assert flood.post(url, headers=good, files=png).status_code == 200


def test_auth_not_deployed_and_other_tenants(
    server: Server, shop: dict[str, Any], tenant: Any
) -> None:
    png = [("file", ("a.png", png_image(16, 16)))]
    assert post(server, shop["cnn"], None, files=png).status_code == 401
    assert post(server, shop["cnn"], "nc_x_y", files=png).status_code == 401
    # Malformed deployment tokens: no secret, no model, nothing after the prefix.
    cnn = shop["cnn"]
    for bad in ("ncd_", "ncd_x", f"ncd_{cnn}", f"ncd_{cnn}_", "ncd__secret"):
        assert post(server, cnn, bad, files=png).status_code == 401, bad
        assert post(server, cnn, bad, files=png).status_code == 401, bad  # not cached either
    tenant("outsiders", cpus=1)
    other = server.client().users.add("out@example.com", ["outsiders"])
    try:
        assert post(server, shop["cnn"], other["token"], files=png).status_code == 404
        theirs = server.client(token=other["token"], tenant="outsiders")
        with pytest.raises(NotFound):
            theirs.models.deploy(shop["cnn"])
    finally:
        server.client().users.remove("out@example.com")
    client: Client = shop["client"]
    # A model that has no deployment: 409 saying so, from the fallback route.
    never = client.models.train(
        "never",
        "mlp.yaml",
        (ROOT / "examples/mlp.yaml").read_text(),
        shop["images"],
        epochs=1,
    )
    client.models.stop(never["id"])  # stopped while queued or early: maybe no weights
    reply = post(server, never["id"], shop["token"], files=png)
    assert reply.status_code == 409 and "not deployed" in reply.json()["message"]
    with pytest.raises(Conflict):
        client.models.undeploy(never["id"])


def test_deploy_refusals(server: Server, shop: dict[str, Any]) -> None:
    client: Client = shop["client"]
    with pytest.raises(Conflict, match="already"):
        client.models.deploy(shop["cnn"])
    with pytest.raises(InvalidInput):
        client.models.deploy(shop["cnn"], replicas=0)
    for bad in ({"max_batch": 0}, {"batch_wait_ms": -1}, {"max_queue": 0}, {"max_batch": 5000}):
        with pytest.raises(InvalidInput):
            client.models.deploy(shop["cnn"], **bad)
    refused = server.cli(
        "model", "deploy", str(shop["cnn"]), "--max-queue", "0", token=shop["token"],
        tenant="shop", check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "max_queue" in refused.stderr
    queued = client.models.train(
        "no-weights", "mlp.yaml", (ROOT / "examples/mlp.yaml").read_text(), shop["images"], epochs=1
    )
    client.models.stop(queued["id"])  # both bundles are serving: it never left the queue
    assert client.models.show(queued["id"])["status"] == "Stopped"
    with pytest.raises(Conflict, match=r"not trained|no checkpoint|no weights"):
        client.models.deploy(queued["id"])


def test_revoked_deployment_token_is_401_and_undeploy_frees_the_bundle(
    server: Server, shop: dict[str, Any]
) -> None:
    client: Client = shop["client"]
    png = [("file", ("a.png", png_image(16, 16)))]
    token = shop["feature_dep"]["token"]
    x = json.dumps([0.0] * 64)
    assert post(server, shop["mlp"], token, files=[("file", ("x.json", x))]).status_code == 200
    server.cli("model", "token-revoke", str(shop["mlp"]), token=shop["token"], tenant="shop")
    # A replica trusts a token it checked for up to a second (AuthCache in serve/throttle.py).
    wait_for(
        lambda: (
            post(server, shop["mlp"], token, files=[("file", ("x.json", x))]).status_code == 401
        ),
        10,
        "the revoked token to be refused",
    )
    time.sleep(1.5)  # past the cache: still refused, it did not come back
    assert post(server, shop["mlp"], token, files=[("file", ("x.json", x))]).status_code == 401
    # The deployment token is scoped to its own model.
    assert post(server, shop["cnn"], token, files=png).status_code == 401
    client.models.undeploy(shop["mlp"])
    wait_for(
        lambda: client.models.deployment(shop["mlp"])["status"] == "Undeployed", 120, "Undeployed"
    )
    reply = post(server, shop["mlp"], shop["token"], files=[("file", ("x.json", x))])
    assert reply.status_code == 409
    assert len(client.resources.list()["training_bundles"]) == 1  # the image deployment's
    with pytest.raises(QuotaExceeded, match="1 of 2 worker slot"):
        client.models.deploy(shop["mlp"], replicas=2)


def test_a_full_replica_answers_503_with_retry_after_and_recovers(
    server: Server, shop: dict[str, Any]
) -> None:
    """A queue of 3 inputs and a batch that waits a second to fill: a flood overflows it.

    One request is held open sending its body, so the replica is never idle and every input
    of the flood waits in the batch (an idle replica forwards at once, and a flood that
    arrived one by one would all fit). Serve lets 2,048 requests into the replica and holds
    up to 64 in the proxy, so every refusal is the replica's JSON 503, not the proxy's.
    """
    client: Client = shop["client"]
    mlp = shop["mlp"]
    if client.models.deployment(mlp)["status"] != "Undeployed":
        client.models.undeploy(mlp)
        wait_for(lambda: client.models.deployment(mlp)["status"] == "Undeployed", 120, "Undeployed")
    dep = deployed(client, mlp, max_queue=3, max_batch=64, batch_wait_ms=1000)
    assert (dep["max_queue"], dep["max_batch"], dep["batch_wait_ms"]) == (3, 64, 1000)
    started, finish = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"["
        started.set()
        finish.wait(timeout=120)
        yield json.dumps([0.0] * 64)[1:].encode()

    with ThreadPoolExecutor(9) as pool:
        held = pool.submit(
            post,
            server,
            mlp,
            shop["token"],
            content=slow_body(),
            headers={"Content-Type": "application/json"},
        )
        assert started.wait(timeout=60), "the held request never started"
        time.sleep(2)  # for the held request to reach the replica (not a timing assertion)
        two = [("file", (f"x{i}.json", json.dumps([0.0] * 64))) for i in range(2)]
        together = threading.Barrier(8)

        def flood(_: int) -> httpx.Response:
            together.wait(timeout=30)
            return post(server, mlp, shop["token"], files=two)

        try:
            replies = list(pool.map(flood, range(8)))
        finally:
            finish.set()
        assert held.result(timeout=120).status_code == 200
    codes = sorted(r.status_code for r in replies)
    assert set(codes) <= {200, 503}, [(r.status_code, r.text[:200]) for r in replies]
    assert 200 in codes and 503 in codes, codes
    for r in replies:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            body = r.json()
            assert body["code"] == "unavailable" and "busy" in body["message"], body
    four = [("file", (f"x{i}.json", json.dumps([0.0] * 64))) for i in range(4)]
    too_many = post(server, mlp, shop["token"], files=four)
    assert too_many.status_code == 413 and "at most 3" in too_many.json()["message"]
    assert post(server, mlp, shop["token"], files=two).status_code == 200


def _status_is(client: Client, model_id: int, status: str) -> bool:
    return client.models.deployment(model_id)["status"] == status


def test_two_replicas_serving_an_earlier_checkpoint(server: Server, shop: dict[str, Any]) -> None:
    """deploy --replicas 2 --checkpoint K through the CLI: both bundles, that epoch's weights."""
    client: Client = shop["client"]
    for model_id in (shop["cnn"], shop["mlp"]):
        if client.models.deployment(model_id)["status"] != "Undeployed":
            server.cli("model", "undeploy", str(model_id), token=shop["token"], tenant="shop")
            wait_for(partial(_status_is, client, model_id, "Undeployed"), 120, "Undeployed")
    no_gpu = server.cli(
        "model", "deploy", str(shop["mlp"]), "-g", "1", token=shop["token"], tenant="shop",
        check=False,
    )  # fmt: skip
    assert no_gpu.returncode == 1 and "with 1 GPU(s) each" in no_gpu.stderr  # none reserved
    kept = client.models.show(shop["cnn"])["checkpoints"]
    earlier = min(kept)
    assert earlier < max(kept)
    out = server.cli(
        "model", "deploy", str(shop["cnn"]), "--replicas", "2", "--checkpoint", str(earlier),
        "-o", "json", token=shop["token"], tenant="shop", timeout=600,
    )  # fmt: skip
    found = json.loads(out.stdout)
    assert (found["status"], found["replicas"], found["checkpoint"]) == ("Deployed", 2, earlier)
    assert found["token"].startswith(f"ncd_{shop['cnn']}_")
    assert len(client.resources.list()["training_bundles"]) == 2
    headers = {"Authorization": f"Bearer {found['token']}"}
    info = httpx.get(found["url"].removesuffix("/predict"), headers=headers, timeout=60)
    assert info.json()["checkpoint"] == earlier
    png = [("file", ("a.png", png_image(16, 16)))]
    for _ in range(4):
        assert post(server, shop["cnn"], found["token"], files=png).status_code == 200


def _replica_pids(server: Server, model_id: int) -> list[int]:
    from ray.util.state import list_actors

    alive = list_actors(
        address=server.dashboard_url,
        filters=[
            ("class_name", "=", f"ServeReplica:ncloud-model-{model_id}:model"),
            ("state", "=", "ALIVE"),
        ],
    )
    # Only a process that still is this model's replica: the state API can lag a kill, and
    # a PID it names may since belong to another process.
    title = f"ServeReplica:ncloud-model-{model_id}:model".encode()
    return sorted(int(a.pid) for a in alive if a.pid is not None and title in _cmdline(a.pid))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _under_load(
    server: Server, model_id: int, token: str, kill: list[int], seconds: float
) -> list[tuple[float, int, str, str]]:
    """(time since the kill, status, Content-Type, Retry-After) of each prediction that 4
    clients sent one after another, from a second before the kill until `seconds` after."""
    png = [("file", ("a.png", png_image(16, 16)))]
    answers: list[tuple[float, int, str, str]] = []
    done = threading.Event()
    killed_at = [float("inf")]

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                try:
                    r = http.post(
                        predict_url(server, model_id),
                        headers={"Authorization": f"Bearer {token}"},
                        files=png,
                    )
                except httpx.HTTPError as exc:  # no answer at all: as bad as a plain 500
                    answers.append((time.monotonic() - killed_at[0], 0, repr(exc), ""))
                    continue
                at = time.monotonic() - killed_at[0]
                kind = r.headers.get("content-type", "")
                answers.append((at, r.status_code, kind, r.headers.get("retry-after", "")))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        killed_at[0] = time.monotonic()
        for pid in kill:
            os.kill(pid, signal.SIGKILL)
        time.sleep(seconds)
    finally:  # the clients stop whatever happened, never hammering the tests that follow
        done.set()
        for t in threads:
            t.join(timeout=60)
    return answers


def test_a_killed_replica_loses_no_request_and_a_killed_deployment_says_retry(
    server: Server, shop: dict[str, Any]
) -> None:
    """After test_two_replicas_...: kill -9 one of the two replicas under load, then both."""
    client: Client = shop["client"]
    model_id = shop["cnn"]
    assert client.models.deployment(model_id)["replicas"] == 2
    pids = _replica_pids(server, model_id)
    assert len(pids) == 2, pids
    token = shop["token"]
    one = _under_load(server, model_id, token, pids[:1], 4.0)
    # The front sends a request the dead replica had again to the other one; only an answer
    # it was writing at the instant of the kill is lost, and that one is a JSON 503, retry.
    cut = [a for a in one if a[1] != 200]
    assert len(one) > 20 and len(cut) <= 1, cut
    assert all((s, kind, retry) == (503, "application/json", "1") for _, s, kind, retry in cut)
    wait_for(
        lambda: len(set(_replica_pids(server, model_id)) - set(pids[:1])) == 2,
        120,
        "the replica back",
    )

    both = _under_load(server, model_id, token, _replica_pids(server, model_id), 30.0)
    refused = [a for a in both if a[1] != 200]
    for at, status, kind, retry in refused:  # never a plain-text 500: a JSON 503, retry
        assert (status, kind, retry) == (503, "application/json", "1"), (at, status, kind)
    last = max([at for at, _, _, _ in refused], default=0.0)
    back = [at for at, status, _, _ in both if status == 200 and at > max(last, 0.0)]
    assert back, "answers again once Serve has started the replicas again"
    first = refused[0][0] if refused else float("nan")
    print(f"\ntimeline (both replicas killed at 0 s): first refusal {first:.2f} s, "
          f"{len(refused)} refused (the last at {last:.2f} s), "
          f"200 again at {back[0]:.2f} s")  # fmt: skip
