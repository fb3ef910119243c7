"""Markdown and HTML rendering: content follows the report, plots are PNGs, writes are atomic."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

from kokoro_opt.report import render
from kokoro_opt.report.render import make_plots, render_html, render_markdown, write_report_dir
from kokoro_opt.report.schema import Report, load_report, save_report
from tests.report_factory import Spec, build_report

IMG = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def full_report() -> Report:
    return build_report(tradeoff=True, concurrency=2, title="FP32 vs INT8 | trial")


@pytest.fixture(scope="module")
def full_html(full_report: Report) -> str:
    return render_html(full_report)


def test_markdown_tables_follow_the_report(full_report: Report) -> None:
    md = render_markdown(full_report)
    assert md.startswith("# FP32 vs INT8 | trial\n")
    for section in ("## Models and speed", "## Quality", "## Speed comparisons", "## Trade-off"):
        assert section in md
    assert "## Per utterance" in md and "## Concurrent streams" in md
    int8 = full_report.model("kokoro-int8")
    assert int8.speed and int8.quality
    comp = full_report.comparison("kokoro-int8")
    assert comp is not None
    row = next(line for line in md.splitlines() if line.startswith("| kokoro-int8 | 126.0 |"))
    assert f"{int8.speed.rtf.median:.3f}" in row and f"{comp.speedup:.2f}x" in row
    assert f"{int8.quality.wer * 100:.1f} %" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            counts = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
            assert len(counts) == 1, block


def test_markdown_escapes_pipes_and_newlines() -> None:
    report = build_report()
    data = report.model_dump()
    data["utterances"][0]["text"] = "a | b\nc"
    md = render_markdown(Report.model_validate(data))
    assert "a \\| b c" in md


def test_html_is_self_contained_with_png_plots(full_report: Report, full_html: str) -> None:
    html = full_html
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "external resource"
    assert "<script" not in html
    imgs = IMG.findall(html)
    assert [alt for alt, _ in imgs] == [p.title for p in make_plots(full_report)]
    assert len(imgs) == 5
    for alt, data in imgs:
        width, height = png_size(base64.b64decode(data))
        assert width >= 500 and height >= 300, alt
    assert "FP32 vs INT8 | trial" in html
    assert 'class="missing"' not in html


def test_html_escapes_report_text() -> None:
    report = build_report()
    report.notes = ["<script>alert(1)</script> & more"]
    html = render_html(report)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html


def test_missing_data_explained_instead_of_empty_plots() -> None:
    report = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=325_600_000, speed=False),
            Spec("kokoro-int8", rtf=0.1, size_bytes=126_000_000, logmel=0.3, speed=False),
        ]
    )
    plots = {p.key: p for p in make_plots(report)}
    assert plots["plot-speed"].png is None and "kokoro-opt bench" in plots["plot-speed"].why_missing
    assert plots["plot-scatter"].png is None
    assert plots["plot-utterances"].png is None
    assert plots["plot-tradeoff"].png is None and "trade-off" in plots["plot-tradeoff"].why_missing
    assert plots["plot-quality"].png is not None
    html = render_html(report)
    assert len(IMG.findall(html)) == 1
    assert html.count('class="missing"') == 4


def test_scatter_and_quality_handle_a_model_without_wer() -> None:
    report = build_report(
        [
            Spec("kokoro-fp32", rtf=0.2, size_bytes=325_600_000, wer=None),
            Spec("kokoro-int8", rtf=0.11, size_bytes=126_000_000, logmel=0.3),
            Spec("kokoro-int4", rtf=0.15, size_bytes=60_000_000, quality=False, logmel=0.5),
        ]
    )
    assert report.model("kokoro-fp32").quality.wer is None  # type: ignore[union-attr]
    plots = {p.key: p for p in make_plots(report)}
    for key in ("plot-speed", "plot-scatter", "plot-quality", "plot-utterances"):
        assert plots[key].png is not None, key
    assert "| kokoro-int4 | - | - |" in render_markdown(report)


def test_write_report_dir_writes_three_files(tmp_path: Path, full_report: Report) -> None:
    paths = write_report_dir(full_report, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json", "report.md"]
    assert load_report(tmp_path / "run") == full_report
    assert (tmp_path / "run" / "report.md").read_text() == render_markdown(full_report)


def test_rerender_leaves_report_json_alone(tmp_path: Path, full_report: Report) -> None:
    save_report(full_report, tmp_path)
    before = (tmp_path / "report.json").read_bytes()
    paths = write_report_dir(full_report, tmp_path, include_json=False)
    assert set(paths) == {"report.md", "report.html"}
    assert (tmp_path / "report.json").read_bytes() == before


def test_render_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(report: Report) -> str:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(render, "render_html", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report_dir(build_report(), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
