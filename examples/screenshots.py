"""The README's screenshots of the dashboard, taken from real runs by the browser test.

    python -m examples.screenshots     # writes examples/screenshots/{models,run,compare}.png

It runs tests/integration/test_ui.py's browser test (a private server, two real training
runs, Debian's headless Chromium) with NCLOUD_UI_SHOTS pointed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "screenshots"


def main() -> None:
    env = {**os.environ, "NCLOUD_UI_SHOTS": str(HERE)}
    test = "tests/integration/test_ui.py::test_the_dashboard_in_a_browser"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], env=env, check=False)
    if done.returncode == 0:
        print(f"screenshots in {HERE}: {', '.join(sorted(p.name for p in HERE.glob('*.png')))}")
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
