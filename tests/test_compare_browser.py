"""The comparison dashboard in a real browser: headless Chromium renders it without console errors,
the metrics table (with the 2-D run's mode-collapse figures), the training curves, the FID-infinity
plot and every sample grid are there and decoded, the script runs (it marks the page and sorts from a
#sort= link), and the screenshot is not blank.

Needs the Debian package `chromium` (/usr/bin/chromium). Marked slow; CI runs it explicitly with
GENLAB_REQUIRE_BROWSER=1 (after installing chromium when missing), and then a missing browser is a
failure, never a silent skip. Elsewhere it is skipped with the reason."""
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("GENLAB_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]


def _chromium(tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    # Page console messages (errors, uncaught exceptions, blocked loads) are logged as ":CONSOLE" lines.
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, "\n".join(console)
    return res.stdout


def _ring8_run(runs: Path) -> Path:
    from genlab import config as C
    from genlab.train import Trainer

    cfg = C.resolve("gan", sets=["data.name=ring8", "train.steps=40", "train.batch_size=64", "train.log_every=10",
                                 "train.sample_every=20", "train.checkpoint_every=40", "diagnose.n=500",
                                 f"out={runs}", "name=ring8-run"])
    Trainer(cfg, runs / "ring8-run", show_progress=False).run()
    return runs / "ring8-run"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not CHROMIUM.exists():
        if os.environ.get("GENLAB_REQUIRE_BROWSER"):
            pytest.fail(f"GENLAB_REQUIRE_BROWSER is set but {CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    from test_compare import make_runs

    from genlab.report.compare import compare

    root = tmp_path_factory.mktemp("browser")
    runs = make_runs(root)
    _ring8_run(runs)
    record = json.loads((runs / "gan-a" / "eval.json").read_text())
    newest = record[-1] if isinstance(record, list) else record
    newest["metrics"].update(fid_inf=35.0, fid_inf_se=0.4, fid_inf_slope=9000.0,
                             fid_inf_points=[[n, 35.0 + 9000.0 / n] for n in range(1000, 10001, 1000)])
    (runs / "gan-a" / "eval.json").write_text(json.dumps(record))
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


def test_table_curves_plots_and_samples_are_rendered(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert 'data-genlab-ready="1"' in dom and 'data-runs="5"' in dom
    shown, decoded = map(int, re.search(r'data-images="(\d+)/(\d+)"', dom).groups())
    assert shown >= 7 and decoded == shown  # every embedded picture decoded in the browser
    for heading in ("Metrics", "Training curves", "FID-infinity", "Latest samples", "Mode-collapse diagnostics"):
        assert f"<h2>{heading}</h2>" in dom, heading
    ring = re.search(r'<tr[^>]*><th scope="row"[^>]*>ring8-run</th>(.*?)</tr>', dom, re.S).group(1)
    cells = re.findall(r'<td[^>]*data-value="([^"]*)"', ring)
    assert len([c for c in cells if c]) >= 5  # modes, high-quality, reverse KL beside model / data / steps
    assert re.search(r'<th[^>]*data-key="diag\.mixture\.modes"', dom)
    assert re.search(r'<img[^>]*class="enlarged"[^>]*style="width:\d+px;image-rendering:pixelated"', dom)


def test_script_runs_and_sorts_in_the_browser(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri() + "#sort=fid:desc")
    assert 'data-genlab-ready="1"' in dom
    group_a = re.search(r'<tbody data-group="A">(.*?)</tbody>', dom, re.S).group(1)
    names = re.findall(r'<th scope="row"[^>]*>([^<]*)</th>', group_a)
    assert names == ["gan-a", "weird&lt;b&gt;&amp;\"'"]  # FID 41.1 before 37.5: descending, within group A
    assert 'aria-sort="descending"' in dom
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri() + "#sort=fid")
    group_a = re.search(r'<tbody data-group="A">(.*?)</tbody>', dom, re.S).group(1)
    assert re.findall(r'<th scope="row"[^>]*>([^<]*)</th>', group_a)[0] == "weird&lt;b&gt;&amp;\"'"
