"""`dvc plots show` and `dvc plots diff` draw with no network: vega is inlined in DVC's page.

The browser runs in a private network namespace that holds only loopback (``unshare --net``), so
nothing it asks for can leave the machine. DVC's stock page, which loads vega from a CDN, is the
control: under the same conditions it must draw nothing, or the check proves nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from dvc_render.html import PAGE_HTML  # type: ignore[import-untyped]

from tests.conftest import GIT, ROOT, copy_project, run
from tests.servers import require

sys.path.insert(0, str(ROOT / "scripts"))
import vendor_vega

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SCREENSHOTS = ROOT / "test-artifacts"
# tests/test_browser.py's.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]  # fmt: skip
# dvc.yaml's two interactive plots (lr and loss by step): the id DVC gives each one's <div>.
CHARTS = ("Learning_rate_used_by_each_update", "Training_loss__log_scale_")

# Before the page's scripts run: keep every vegaEmbed() call's promise, to ask its View later.
# vega-embed's UMD build assigns globalThis.vegaEmbed, which this setter wraps.
HOOK = """
window.__embeds = [];
let embed;
Object.defineProperty(window, "vegaEmbed", {
  configurable: true,
  get: () => embed,
  set: (real) => {
    embed = Object.assign((el, spec, options) => {
      const made = real(el, spec, options);
      window.__embeds.push(made.then(
        (result) => ({ el, view: result.view }),
        (error) => ({ el, error: String(error) }),
      ));
      return made;
    }, real);
  },
});
"""
# After load: each chart's line marks, read from the View's scenegraph (one mark per series),
# and how many of its canvas's pixels are coloured (the lines; axes and text are grey).
COLLECT = """
async () => {
  const timeout = new Promise((done) => setTimeout(() => done(null), 20000));
  const embeds = await Promise.race([Promise.all(window.__embeds), timeout]);
  if (embeds === null) return "timed out";
  return embeds.map(({ el, view, error }) => {
    const id = String(el).replace(/^#/, "");
    if (error) return { id, error };
    const lines = [];
    const walk = (mark) => {
      if (mark.marktype === "line" && mark.items.length) {
        const datum = mark.items[0].datum;
        lines.push({ scheduler: datum.scheduler, rev: datum.rev, points: mark.items.length });
      }
      for (const item of mark.items || []) for (const child of item.items || []) walk(child);
    };
    walk(view.scenegraph().root);
    const canvas = document.querySelector(`#${id} canvas`);
    let coloured = 0;
    if (canvas) {
      const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured += 1;
      }
    }
    return { id, lines, coloured };
  });
}
"""


def test_dvc_fills_the_vendored_page_which_loads_nothing():
    from configobj import ConfigObj  # type: ignore[import-untyped]

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert ROOT / ".dvc" / config["plots"]["html_template"] == vendor_vega.TEMPLATE
    page = vendor_vega.TEMPLATE.read_text()
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # no CDN <script> tags
    assert page.count("<script>") == len(vendor_vega.SCRIPTS) and "<script src" not in page
    for script in vendor_vega.SCRIPTS:
        banner = f"/*! {script.package.spec} {script.path} ({script.spdx}), from the npm tarball"
        assert f"{banner} {script.package.filename} ({script.package.integrity})" in page
        licence = vendor_vega.VENDOR / f"LICENSE.{script.package.name}"
        assert licence.read_text().strip() in page
    assert 500_000 < len(page.encode()) < 2_000_000


def _network_namespace() -> list[str]:
    """The command prefix that runs a process with a network of its own (none), or []."""
    command = ["unshare", "--net", *(["--map-root-user"] if os.geteuid() else [])]
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run([*command, "true"], capture_output=True)
    return command if probe.returncode == 0 else []


@pytest.mark.browser
def test_plots_show_and_diff_draw_every_line_with_the_network_off(reproduced, tmp_path):
    chromium = shutil.which("chromium")
    require("Debian's chromium", chromium is not None)
    offline = _network_namespace()
    require("a private network namespace (util-linux's unshare --net)", bool(offline))

    # The reproduced run, committed; then train with another lr: HEAD and workspace differ.
    root = copy_project(reproduced["root"], tmp_path / "project")
    env = reproduced["env"]
    run([*GIT, "add", "-A"], root, env)
    run([*GIT, "commit", "-qm", "first run"], root, env)
    document = yaml.safe_load((root / "params.yaml").read_text())
    document["train"]["lr"] *= 3
    (root / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    run(["dvc", "repro", "train"], root, env)

    # Written outside the project (-o): the pages must not depend on where they are.
    pages = tmp_path / "elsewhere"
    stock = tmp_path / "stock.html"
    stock.write_text(PAGE_HTML)  # DVC's own page: vega from cdn.jsdelivr.net
    for name, command in {
        "show": ["dvc", "plots", "show"],
        "diff": ["dvc", "plots", "diff", "HEAD"],
        "stock": ["dvc", "plots", "show", "--html-template", str(stock)],
    }.items():
        run([*command, "-o", str(pages / name)], root, env)
    assert "cdn.jsdelivr.net" not in (pages / "show" / "index.html").read_text()
    assert "cdn.jsdelivr.net" in (pages / "stock" / "index.html").read_text()

    found = tmp_path / "found.json"
    browsing = subprocess.run(
        [*offline, sys.executable, "-m", "tests.test_plots_offline", str(chromium), str(found),
         *(str(pages / name / "index.html") for name in ("show", "diff", "stock"))],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert browsing.returncode == 0, browsing.stdout + browsing.stderr
    seen = json.loads(found.read_text())
    assert seen["interfaces"] == ["lo"]  # the browser had no way out

    steps = (root / "outputs" / "steps.csv").read_text().splitlines()[1:]
    rows = {
        name: sum(row.split(",")[1] == name for row in steps) for name in document["schedulers"]
    }
    assert all(rows.values())
    for name, revisions in (("show", ["workspace"]), ("diff", ["HEAD", "workspace"])):
        page = seen["pages"][name]
        assert page["errors"] == [] and page["failed"] == [], page
        assert page["remote"] == [], f"{name} asked the network for {page['remote']}"
        assert page["charts"] != "timed out" and page["drawn"] == len(CHARTS), page
        assert sorted(chart["id"] for chart in page["charts"]) == sorted(CHARTS), page["charts"]
        for chart in page["charts"]:
            assert "error" not in chart, chart
            drawn = sorted((line["scheduler"], line["rev"]) for line in chart["lines"])
            assert drawn == sorted((s, rev) for s in rows for rev in revisions), (name, chart)
            for line in chart["lines"]:  # every step a point: nothing left out (log scale too)
                assert line["points"] == rows[line["scheduler"]], (name, chart["id"], line)
            assert chart["coloured"] > 1000, (name, chart["id"], chart["coloured"])

    # The control: the same plots from DVC's stock page draw nothing, its CDN out of reach.
    control = seen["pages"]["stock"]
    assert control["charts"] == [] and control["drawn"] == 0, control
    assert any("vegaEmbed is not" in error for error in control["errors"]), control
    assert {url.split("/")[2] for url in control["failed"]} == {"cdn.jsdelivr.net"}, control


def _loopback_up() -> list[str]:
    """Bring loopback up (``ip link set lo up``, without iproute2); the interfaces there are."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, siocgifflags, request))[1]
        fcntl.ioctl(probe, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    return [name for _, name in socket.if_nameindex()]


def _visit(browser: Browser, path: Path) -> dict:
    """One page: what it asked for, its errors, and what each of its charts drew."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    asked: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(HOOK)
    page.goto(path.as_uri(), wait_until="load")
    charts = page.evaluate(COLLECT)
    drawn = page.locator("canvas.marks, svg.marks").count()  # vega's, not the figures' <img>s
    page.screenshot(path=SCREENSHOTS / f"dvc-plots-offline-{path.parent.name}.png")
    page.close()
    remote = [url for url in asked if not url.startswith(("file:", "data:", "blob:"))]
    return {"charts": charts, "drawn": drawn, "errors": errors, "failed": failed, "remote": remote}


def _browse(chromium: str, found: Path, paths: list[Path]) -> None:
    """Open each page in headless Chromium; write down what each asked for and drew."""
    from playwright.sync_api import sync_playwright

    seen: dict = {"interfaces": _loopback_up(), "pages": {}}
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            for path in paths:
                seen["pages"][path.parent.name] = _visit(browser, path)
        finally:
            browser.close()
    found.write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":  # the browsing half, run by the test in its own network namespace
    _browse(sys.argv[1], Path(sys.argv[2]), [Path(arg) for arg in sys.argv[3:]])
