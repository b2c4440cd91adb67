"""Open a page in headless Chromium (Debian's package) and take a screenshot, for the tests that
check a page really renders (explanations.html, the docs site). `make test` installs Chromium where
the machine lets it; elsewhere `need_chromium()` skips the test and says why."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def need_chromium():
    path = chromium()
    if path is None:
        pytest.skip("no headless Chromium on this machine (make test installs Debian's chromium where it runs as root "
                    "with apt; install it with: apt-get install chromium)")
    return path


def screenshot(page, png, size=(1200, 900), timeout=120):
    """Render `page` (a file path or URL) to the PNG `png`; return the image as an (h, w, channels) array."""
    exe = need_chromium()
    url = page if "://" in str(page) else Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={png}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert Path(png).is_file(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    import matplotlib.image

    return matplotlib.image.imread(png)


def is_blank(image):
    """True where a screenshot is one flat colour (nothing rendered)."""
    pixels = np.asarray(image)[..., :3].reshape(-1, 3)
    return len(np.unique((pixels * 255).round().astype(np.uint8), axis=0)) < 3 or float(pixels.std()) < 0.01
