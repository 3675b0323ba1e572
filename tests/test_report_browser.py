"""The smoke run's `snakemake --report` in a real browser: headless Chromium (Debian's `chromium`,
installed by tests/browser/ensure_chromium.sh when missing) renders report.html, its screenshot is not blank and
its page shows the report's categories; and every figure of the registry for the smoke config is in the report
with its caption (rendered from workflow/report/<caption>.rst with the figure's parameters) and its PNG.

Skipped, saying why, only when Chromium is missing and cannot be installed (no apt-get, not root, no package
source). Cost: the report itself (shared with tests/test_figures.py) plus two browser starts, about 10-15 s
once Chromium is installed; the install (apt-get) comes on top, once per machine.
"""

import base64
import html
import json
import os
import re
import signal
import subprocess

import pytest
import yaml
from docutils.core import publish_parts

from sharpgaps.pipeline.config import validate
from sharpgaps.report import figures, plotting
from tests.helpers import FIGURE_DIR, REPO, SMOKE_CONFIG

ENSURE = REPO / "tests/browser/ensure_chromium.sh"
WINDOW = (1280, 900)
TIMEOUT_S = 120  # one browser start; it takes seconds when the machine is not starved
TABLES = {"geometry": "{experiment}", "restricted": "r", "theory": "t", "estimators": "e", "mechanism": "m",
          "heterogeneity": "h"}


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable, installed with apt-get if missing; skip (with the reason) if it cannot be."""
    proc = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        reason = [line for line in proc.stderr.splitlines() if line.startswith("ensure_chromium:")]
        pytest.skip(f"no headless Chromium, and it could not be installed: {' '.join(reason) or proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def headless(chromium, tmp_path, *args, url) -> subprocess.CompletedProcess:
    """Run headless Chromium once, in its own process group (its zygote and renderers with it) and with its own
    profile; the group is killed when the browser is done or after TIMEOUT_S."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--mute-audio", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--virtual-time-budget=10000", *args, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        out, err = "", f"timed out after {TIMEOUT_S} s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, and only it
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0 or out, f"chromium {' '.join(args)} failed ({proc.returncode}):\n{err[-2000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def drawn_figures() -> dict:
    """stem -> figure (parameters, labels) of every figure the smoke config draws, from the registry."""
    cfg = validate(yaml.safe_load(SMOKE_CONFIG.read_text()), REPO / "workflow/schemas/config.schema.yaml")
    registry = figures.load_registry(REPO / "workflow/figures.yaml")
    return {stem: {**fig, "caption": registry[family]["caption"]}
            for family, figs in figures.expand(registry, cfg, TABLES).items() for stem, fig in figs.items()}


def plain(html_text: str) -> str:
    """The text of an HTML caption: no tags or entities, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", html_text)).split())


@pytest.mark.workflow
def test_report_renders_in_chromium_and_is_not_blank(chromium, smoke_report, tmp_path):
    from PIL import Image

    url = smoke_report.as_uri()
    shot = tmp_path / "report.png"
    headless(chromium, tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url=url)
    assert shot.is_file(), f"chromium wrote no screenshot of {url}"
    img = Image.open(shot).convert("RGB")
    assert img.size == WINDOW
    counts = sorted((n for n, _ in img.getcolors(maxcolors=WINDOW[0] * WINDOW[1])), reverse=True)
    background = counts[0] / (WINDOW[0] * WINDOW[1])
    # a blank (or failed-script) page is one colour; the report's start page has a sidebar, text and the DAG
    assert background < 0.9 and len(counts) >= 32, f"screenshot looks blank: {background:.1%} one colour, " \
                                                   f"{len(counts)} colours"
    # the page was built by the report's script: its menu shows the categories (the HTML file has them only as data)
    dom = headless(chromium, tmp_path, "--dump-dom", url=url).stdout
    source = smoke_report.read_text()
    for category in ("Figures", "Figure data", "Results"):
        assert f"<span>{category}</span>" in dom and f"<span>{category}</span>" not in source, category


@pytest.mark.workflow
def test_report_holds_every_registry_figure_with_its_caption(smoke, smoke_report):
    text = smoke_report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text).group(1))
    drawn = drawn_figures()
    assert drawn and set(results) == {f"{FIGURE_DIR}/{s}.{e}" for s in drawn for e in ("png", "csv")} | {
        f"{FIGURE_DIR}/RESULTS.md"}
    for stem, fig in drawn.items():
        rst = plotting.caption_text(REPO / "workflow/report" / fig["caption"],
                                    {**fig["parameters"], "out_png": f"{FIGURE_DIR}/{stem}.png"})
        caption = publish_parts(rst, writer_name="html")["body"]  # reStructuredText to HTML, as the report does
        for ext in ("png", "csv"):
            shown = results[f"{FIGURE_DIR}/{stem}.{ext}"]
            assert plain(shown["caption"]) == plain(caption), f"{stem}.{ext}: the report's caption differs"
            assert shown["labels"] == fig["labels"], stem
        png = results[f"{FIGURE_DIR}/{stem}.png"]["data_uri"]
        assert base64.b64decode(png.split("base64,", 1)[1]) == (smoke / FIGURE_DIR / f"{stem}.png").read_bytes(), stem


def test_making_the_report_prints_no_warning(smoke_report):
    """Snakemake's input-size default resource made `--report` print a "coroutine ... never awaited" warning per job;
    the default profile fixes disk_mb instead."""
    log = smoke_report.with_name("report.log").read_text()
    assert "Report created" in log and "never awaited" not in log and "Warning" not in log, log[-3000:]
