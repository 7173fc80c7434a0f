# A hostile tenant's spec: every probe tries something a sandbox must refuse.
# The test fills in the host's real paths and ports (CONFIG below); the
# network runs all probes in every forward pass and raises LEAK naming any that worked,
# so a leak fails the check (422), the run (Failed), a prediction (500) or a batch.
import json
import os
import socket
import sqlite3
import subprocess
import sys

from torch import nn

CONFIG: dict = {}  # the test puts the host's real paths and ports here
HOME = CONFIG["home"]
STORE = CONFIG["store"]
RAY_TOKEN = CONFIG["ray_token"]
OTHER_TENANT = CONFIG["other_tenant"]
CACHE = CONFIG["cache"]
REPO = CONFIG["repo"]
PORTS = CONFIG["ports"]
MARKER = CONFIG["marker"]
LEFT: list[str] = []  # the probes that got through


def probe(name, attempt):
    try:
        if attempt():
            LEFT.append(name)
    except Exception:
        pass  # refused: exactly what should happen


def read(path):
    with open(path, "rb") as f:
        return len(f.read(64)) >= 0


def insert_token():
    con = sqlite3.connect(STORE, timeout=1)
    con.execute("INSERT INTO tokens (name) VALUES ('pwned')")
    con.commit()
    return True


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return True


def outlive():
    # A detached grandchild that would sleep for ten minutes (the marker names it).
    code = "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(600)\n"
    subprocess.Popen([sys.executable, "-c", code + "# " + MARKER], start_new_session=True)
    return False  # starting one is allowed inside; the test checks it did not outlive the run


def secrets():
    names = [
        k
        for k in os.environ
        if k.startswith(("RAY_", "AWS_")) or (k.startswith("NCLOUD_") and k != "NCLOUD_DATA_DIR")
    ]
    return bool(names)


def host_processes():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"raylet" in cmd or b"gcs_server" in cmd or b"ncloud" in cmd.split(b"\0")[0]:
                return True
    return False


def new_user_namespace():
    import ctypes

    return ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0  # CLONE_NEWUSER


def run_all():
    LEFT.clear()
    probe("read the SQL store", lambda: read(STORE))
    probe("insert a token into the store", insert_token)
    probe("read the Ray auth token", lambda: read(RAY_TOKEN))
    probe("list NCLOUD_HOME", lambda: bool(os.listdir(HOME)))
    probe("read ~/.ncloud", lambda: bool(os.listdir(os.path.expanduser("~root/.ncloud"))))
    probe("list another tenant's storage", lambda: bool(os.listdir(OTHER_TENANT)))
    probe("list the node's shard cache", lambda: bool(os.listdir(CACHE)))
    probe("read /etc/shadow", lambda: read("/etc/shadow"))
    for name, port in PORTS.items():
        probe(f"connect to {name} port {port}", lambda port=port: connect(port))
    probe("write into NCLOUD_HOME", lambda: write(os.path.join(HOME, "pwned")))
    probe("write into the repository", lambda: write(os.path.join(REPO, "pwned")))
    probe("write into the Python environment", lambda: write(os.path.join(sys.prefix, "pwned")))
    probe("secrets in the environment", secrets)
    probe("run as root", lambda: os.getuid() == 0 or os.geteuid() == 0)
    probe("see the host's processes", host_processes)
    probe("create a user namespace", new_user_namespace)
    probe("leave a process behind", outlive)
    return list(LEFT)


class Hostile(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.probed = False

    def forward(self, x):
        if not self.probed:
            self.probed = True
            left = run_all()
            print("PROBES", json.dumps({"left": left}))
            if left:
                raise RuntimeError("LEAK: " + "; ".join(left))
        return self.net(x.float())


def model(num_classes, input_shape):
    return Hostile(num_classes, input_shape)
