"""The comparison report in a real browser: headless Chromium renders it without console errors,
its script runs (it marks the page and sorts from a #sort= link), and the screenshot is not blank.

Needs the Debian package `chromium` (/usr/bin/chromium); skipped cleanly where it is absent."""
import re
import struct
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def _chromium(tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    # Page console messages (errors, uncaught exceptions, blocked loads) are logged as ":CONSOLE" lines.
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, "\n".join(console)
    return res.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    from test_compare import make_runs

    from genlab.report.compare import compare

    root = tmp_path_factory.mktemp("browser")
    runs = make_runs(root)
    out = root / "report.html"
    compare([runs], out, "html")
    return out


def test_screenshot_renders_without_console_errors(report, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1400, 1800)
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, "screenshot is blank"


def test_script_runs_and_sorts_in_the_browser(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri() + "#sort=fid:desc")
    assert 'data-genlab-ready="1"' in dom and 'data-runs="4"' in dom
    group_a = re.search(r'<tbody data-group="A">(.*?)</tbody>', dom, re.S).group(1)
    names = re.findall(r'<th scope="row"[^>]*>([^<]*)</th>', group_a)
    assert names == ["gan-a", "weird&lt;b&gt;&amp;\"'"]  # FID 41.1 before 37.5: descending, within group A
    assert 'aria-sort="descending"' in dom
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri() + "#sort=fid")
    group_a = re.search(r'<tbody data-group="A">(.*?)</tbody>', dom, re.S).group(1)
    assert re.findall(r'<th scope="row"[^>]*>([^<]*)</th>', group_a)[0] == "weird&lt;b&gt;&amp;\"'"
