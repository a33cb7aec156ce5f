"""What the real-browser tests share: Debian's chromium (driven by Playwright, no `playwright install`), the skip when
it is absent, and where screenshots go ($CHEXONE_SCREENSHOTS, relative to the repository, or the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium binary at {CHROMIUM} (CI "
                                                                          "installs Debian's chromium; apt-get install "
                                                                          "chromium)")


def screenshot_dir(tmp_path: Path) -> Path:
    shots = Path(os.environ.get("CHEXONE_SCREENSHOTS") or tmp_path / "screenshots")
    if not shots.is_absolute():
        shots = REPO / shots
    shots.mkdir(parents=True, exist_ok=True)
    return shots
