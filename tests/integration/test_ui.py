"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium, against
the session's server. Screenshots go to NCLOUD_UI_SHOTS (default: the test's tmp folder)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.conftest import Server, wait_for
from tests.integration.lab import ROOT, as_user, slow_py, submit, until

WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "the dashboard's tests need Chromium: make browser"
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    found = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    found.set_page_load_timeout(WAIT_S)
    try:
        yield found
    finally:
        found.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("NCLOUD_UI_SHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait(b: webdriver.Chrome, what: str, condition: Any) -> Any:
    return WebDriverWait(b, WAIT_S).until(condition, f"waited {WAIT_S}s for {what}")


def _sign_in(b: webdriver.Chrome, base: str, token: str) -> None:
    b.get(f"{base}/ui/login")
    b.find_element(By.ID, "token").send_keys(token)
    b.find_element(By.ID, "sign-in").click()


def _points(b: webdriver.Chrome, chart: str) -> list[int]:
    """How many points each trace of a drawn Plotly chart has (what the browser holds)."""
    script = (
        "const el = document.getElementById(arguments[0]);"
        "return el && el.data ? el.data.map(t => t.x.length) : null;"
    )
    return _wait(b, f"chart {chart}", lambda d: d.execute_script(script, chart))  # type: ignore[no-any-return]


def test_the_dashboard_in_a_browser(
    server: Server,
    lab: dict[str, Any],
    tenant: Any,
    browser: webdriver.Chrome,
    shots: Path,
) -> None:
    b, base = browser, server.api_url
    client = as_user(server, lab)
    spec = (ROOT / "examples" / "mlp.yaml").read_text()
    first = submit(
        client, lab, "ui-first", spec, spec_name="mlp.yaml", epochs=3, valid_dataset=lab["valid"]
    )
    second = submit(
        client,
        lab,
        "ui-second",
        spec,
        spec_name="mlp.yaml",
        epochs=2,
        seed=7,
        valid_dataset=lab["valid"],
    )
    for m in (first, second):
        until(client, int(m["id"]), {"Completed"})

    # Another tenant's model: neither listed nor reachable by URL.
    tenant("ui-other", cpus=1)
    other = server.client().users.add("otto@example.com", ["ui-other"])
    try:
        # Bad input first: a wrong token at sign-in is a clear message, no session.
        _sign_in(b, base, "nc_1_not-a-real-token")
        message = _wait(b, "the refusal", lambda d: d.find_element(By.ID, "message")).text
        assert "that token was refused" in message, message
        assert b.get_cookie("ncloud_session") is None

        _sign_in(b, base, lab["token"])
        _wait(b, "the models page", lambda d: d.find_elements(By.ID, f"model-{first['id']}"))
        assert "tess@example.com" in b.find_element(By.ID, "me").text
        cookie = b.get_cookie("ncloud_session")
        assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict"
        assert lab["token"] not in b.current_url
        row = b.find_element(By.ID, f"model-{first['id']}").text
        assert "ui-first" in row and "Completed" in row and "3/3" in row, row
        b.save_screenshot(str(shots / "models.png"))

        # A run's page: a chart with one point per epoch, the log, the history, buttons.
        b.find_element(By.LINK_TEXT, "ui-first").click()
        assert _points(b, "chart-accuracy") == [3]
        assert _points(b, "chart-loss") == [3, 3]
        assert b.find_element(By.ID, "status").text == "Completed"
        assert b.find_element(By.ID, "deploy").is_displayed()
        assert b.find_element(By.ID, "resume").is_displayed()
        assert "epoch 3" in b.find_element(By.ID, "checkpoints").text
        b.save_screenshot(str(shots / "run.png"))

        # A run followed live: its page, opened while it waits or trains, redraws itself.
        slow = submit(client, lab, "ui-live", slow_py(sleep=0.03), epochs=4)
        b.get(f"{base}/ui/models/{slow['id']}")
        assert b.find_element(By.ID, "status").text in {"Queued", "Starting", "Running"}
        seen: set[str] = set()

        def finished(d: webdriver.Chrome) -> bool:
            seen.add(d.find_element(By.ID, "status").text)
            return "Completed" in seen

        WebDriverWait(b, 240, poll_frequency=0.2).until(finished, "the live page to finish")
        assert "Running" in seen, seen  # it showed the run training, then done
        assert _points(b, "chart-loss")[0] == 4

        # The buttons: stop a run that trains; deploy a trained one (its token shown once),
        # see it on Deployments, undeploy it.
        long = submit(client, lab, "ui-stopped", slow_py(sleep=0.05), epochs=50)
        b.get(f"{base}/ui/models/{long['id']}")
        _wait(b, "the run to train", lambda d: d.find_element(By.ID, "status").text == "Running")
        b.get(f"{base}/ui/models/{long['id']}")  # its buttons are those of a running run
        b.find_element(By.ID, "stop").click()
        until(client, int(long["id"]), {"Stopped"})
        b.get(f"{base}/ui/models/{first['id']}")
        b.find_element(By.ID, "deploy").click()
        token = _wait(b, "the deploy page", lambda d: d.find_element(By.ID, "deploy-token")).text
        assert token.startswith(f"ncd_{first['id']}_"), token
        wait_for(
            lambda: client.models.deployment(int(first["id"]))["status"] == "Deployed", 180,
            "deployed from the dashboard",
        )  # fmt: skip
        b.get(f"{base}/ui/deployments")
        row = b.find_element(By.ID, f"deployment-{first['id']}").text
        assert "Deployed" in row and f"{base}/models/{first['id']}/predict" in row, row
        b.get(f"{base}/ui/models/{first['id']}")
        b.find_element(By.ID, "undeploy").click()
        wait_for(
            lambda: client.models.deployment(int(first["id"]))["status"] == "Undeployed", 120,
            "undeployed from the dashboard",
        )  # fmt: skip
        actions = {r["action"] for r in server.client().audit.list(user="tess@example.com")}
        assert {"ui POST /models/{model_id}/stop", "ui POST /models/{model_id}/deploy"} <= actions

        # Compare the two: overlaid curves, a line per run with its own epochs.
        b.get(f"{base}/ui/models")
        for m in (first, second):
            _wait(b, "the table", lambda d, m=m: d.find_elements(By.ID, f"model-{m['id']}"))
            b.find_element(By.CSS_SELECTOR, f"#model-{m['id']} input.pick").click()
        b.find_element(By.ID, "compare").click()
        assert sorted(_points(b, "chart-valid_accuracy")) == [2, 3]  # newest first
        assert "ui-second" in b.find_element(By.TAG_NAME, "h1").text
        b.save_screenshot(str(shots / "compare.png"))

        # The tenant's other objects.
        b.get(f"{base}/ui/datasets")
        row = b.find_element(By.ID, f"dataset-{lab['train']}").text
        assert "train" in row and "Ready" in row, row
        b.get(f"{base}/ui/compare")  # no ids yet: the form, and the models to pick from
        assert "ui-first" in b.find_element(By.TAG_NAME, "main").text
        b.get(f"{base}/ui/volumes")
        assert b.find_element(By.TAG_NAME, "h1").text == "Volumes"
        b.get(f"{base}/ui/deployments")
        row = b.find_element(By.ID, f"deployment-{first['id']}").text
        assert "Undeployed" in row, row
        b.get(f"{base}/ui/resources")
        cpus = b.find_element(By.ID, "resource-cpus").text
        assert cpus.split()[:2] == ["cpus", "2"], cpus
        used = b.find_element(By.ID, f"usage-run-{first['id']}").text
        assert "ui-first" in used and "1GiB" in used, used

        b.get(f"{base}/ui/admin")  # a tenant's user is no admin
        assert "403" in b.find_element(By.TAG_NAME, "h1").text

        # A tampered cookie signs the browser out.
        b.add_cookie({**cookie, "value": cookie["value"][:-3] + "xyz"})
        b.get(f"{base}/ui/models")
        assert b.current_url.startswith(f"{base}/ui/login")
        assert "signed out" in b.find_element(By.ID, "message").text

        # Another tenant's user: the lab's models are neither listed nor reachable (404).
        _sign_in(b, base, other["token"])
        _wait(b, "otto's models page", lambda d: d.find_elements(By.ID, "sign-out"))
        assert "ui-other" in b.find_element(By.ID, "tenant").text
        assert not b.find_elements(By.ID, f"model-{first['id']}")
        b.get(f"{base}/ui/models/{first['id']}")
        assert "404" in b.find_element(By.TAG_NAME, "h1").text
        assert f"no model {first['id']}" in b.find_element(By.ID, "message").text.lower()
        b.get(f"{base}/ui/compare?ids={first['id']}")
        assert "404" in b.find_element(By.TAG_NAME, "h1").text

        # Sign out: the session is gone, pages ask for a sign-in.
        b.get(f"{base}/ui/models")
        _wait(b, "the models page", lambda d: d.find_elements(By.ID, "sign-out"))
        b.find_element(By.ID, "sign-out").click()
        _wait(b, "the sign-in page", lambda d: d.find_elements(By.ID, "token"))
        assert b.get_cookie("ncloud_session") is None
        b.get(f"{base}/ui/models/{first['id']}")
        assert b.current_url.startswith(f"{base}/ui/login")
    finally:
        server.client().users.remove("otto@example.com")


def test_the_dashboard_refuses_without_a_session_and_from_another_site(
    server: Server, tenant: Any
) -> None:
    base = f"{server.api_url}/ui"
    tenant("ui-picked")
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        page = http.get(f"{base}/models")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
        form = http.get(f"{base}/login")
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        assert form.headers["x-frame-options"] == "DENY"
        elsewhere = {"Origin": "http://evil.example"}
        forced = http.post(f"{base}/login", data={"token": server.admin_token}, headers=elsewhere)
        assert forced.status_code == 403 and "ncloud_session" not in forced.headers.get(
            "set-cookie", ""
        )
        assert http.get(f"{base}/vendor/plotly.min.js").status_code == 200  # served by ncloud
        bad = http.post(f"{base}/login", data={"token": "nope"})
        assert bad.status_code == 401 and "that token was refused" in bad.text
        signed = http.post(f"{base}/login", data={"token": server.admin_token})
        assert signed.status_code == 303 and "ncloud_session" in signed.headers["set-cookie"]
        assert server.admin_token not in signed.headers["location"]
        admin = http.get(f"{base}/models")  # the client keeps the cookie; an admin in no
        assert admin.headers.get("location") == "/ui/admin"  # tenant picks one there
        assert "Audit log" in http.get(f"{base}/admin").text
        forged = http.post(f"{base}/logout", headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403 and "another site" in forged.text
        assert http.get(f"{base}/admin").status_code == 200  # still signed in
        picked = http.post(f"{base}/tenant", data={"tenant": "ui-picked"})
        assert picked.status_code == 303 and http.get(f"{base}/models").status_code == 200
        as_admin = server.client()
        (row,) = as_admin.audit.list(user=as_admin.info()["user"]["email"], limit=1)
        assert (row["action"], row["status"], row["outcome"]) == ("ui POST /tenant", 303, "ok")
        bad_ids = http.get(f"{base}/compare?ids=x")
        assert bad_ids.status_code == 422 and "model ids" in bad_ids.text
        too_many = http.get(f"{base}/compare?ids=" + ",".join(str(i) for i in range(1, 10)))
        assert too_many.status_code == 422 and "1 to 8" in too_many.text
        assert http.get(f"{base}/models/0").status_code == 422
