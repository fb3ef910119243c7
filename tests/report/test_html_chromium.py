"""The HTML report opens in headless Chromium with its plots loaded and visible.

Two checks on a rendered report: (1) a harness page loads report.html in an iframe and writes
into its own DOM how many images the report has and each one's decoded size
(`img.complete && naturalWidth > 0`), read back with `--dump-dom`; (2) a screenshot of the
report itself must show the plots' colours, which a page of tables and broken images lacks.

Skipped only when no Chromium is installed (CI installs it: `apt-get install -y chromium`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kokoro_opt.report.render import make_plots, write_report_dir
from tests.report_factory import build_report

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed; install it with "
    "'apt-get update && apt-get install -y chromium' to run the HTML screenshot test",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

HARNESS = """<!DOCTYPE html>
<html><body><pre id="result">PENDING</pre>
<iframe id="report" src="report.html" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var out = document.getElementById("result");
  var doc = this.contentDocument;
  if (!doc) { out.textContent = "NO-ACCESS"; return; }
  var imgs = Array.prototype.slice.call(doc.images);
  var sizes = imgs.map(function (i) {
    return (i.complete && i.naturalWidth > 0) ? i.naturalWidth + "x" + i.naturalHeight : "BROKEN";
  });
  out.textContent = "IMAGES " + imgs.length + " " + sizes.join(" ");
});
</script></body></html>
"""


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html-report")
    write_report_dir(build_report(tradeoff=True, concurrency=2), out)
    (out / "harness.html").write_text(HARNESS)
    return out


def _image_report(run_dir: Path, tmp_path: Path) -> list[str]:
    """What the harness saw: ['IMAGES', count, 'WxH' or 'BROKEN' per image]."""
    proc = _chromium(
        [
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (run_dir / "harness.html").as_uri(),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="result">([^<]*)</pre>', proc.stdout)
    assert match, proc.stdout[-2000:]
    return match.group(1).split()


def _coloured_share(run_dir: Path, tmp_path: Path) -> tuple[float, float]:
    """Screenshot report.html; (share of saturated pixels, share of non-white pixels)."""
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = _chromium(
        ["--window-size=1280,2600", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
        tmp_path,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert rgb.shape == (2600, 1280, 3)
    # Plot colours (matplotlib's C0 blue / C1 orange bars, coloured markers) are saturated;
    # text, table borders and the white page are not.
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 80
    non_white = rgb.min(axis=2) < 240
    return float(saturated.mean()), float(non_white.mean())


def test_every_plot_image_loads_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    result = _image_report(run_dir, tmp_path)
    assert result[0] == "IMAGES", result
    expected = len(make_plots(build_report(tradeoff=True, concurrency=2)))
    assert int(result[1]) == expected == 5
    sizes = result[2:]
    assert "BROKEN" not in sizes, sizes
    for size in sizes:
        width, height = map(int, size.split("x"))
        assert width >= 500 and height >= 300


def test_screenshot_shows_the_plots(run_dir: Path, tmp_path: Path) -> None:
    saturated, non_white = _coloured_share(run_dir, tmp_path)
    assert saturated > 0.02, f"only {saturated:.2%} coloured pixels: plots did not show"
    assert non_white > 0.05, "screenshot is blank"


def test_checks_catch_broken_images(run_dir: Path, tmp_path: Path) -> None:
    """Control: the same page with corrupt PNG data fails both checks."""
    broken = tmp_path / "broken"
    broken.mkdir()
    html = (run_dir / "report.html").read_text()
    html = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,iVBORw0KGgoAAAAbroken", html)
    (broken / "report.html").write_text(html)
    (broken / "harness.html").write_text(HARNESS)
    result = _image_report(broken, tmp_path)
    assert result[:2] == ["IMAGES", "5"] and set(result[2:]) == {"BROKEN"}
    saturated, _ = _coloured_share(broken, tmp_path)
    assert saturated < 0.02
