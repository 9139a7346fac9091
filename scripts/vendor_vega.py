"""Rebuild the offline page of `dvc plots show` / `dvc plots diff` from pinned npm tarballs.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so with no network its charts are
blank. `.dvc/config` points DVC (``plots.html_template``) at ``.dvc/plots/offline.html`` instead:
DVC's page with the three scripts inlined, so that the HTML that DVC writes draws anywhere, with no
network and wherever ``-o`` puts it. This script writes that page and ``.dvc/plots/vendor/`` (the
licence texts and a manifest) from the npm tarballs pinned below, each checked against its npm
``integrity`` (sha512) before anything is read from it. Both are committed: a clone needs neither
this script nor npm.

To upgrade: change a version and its integrity below (``npm view vega@5.34.0 dist.integrity``),
run ``python scripts/vendor_vega.py``, then the offline test (tests/test_plots_offline.py). The
majors stay those of DVC's own page (dvc-render's ``VegaRenderer.SCRIPTS``: vega 5, vega-lite 5,
vega-embed 6), whose specs, ours in .dvc/plots/*.json included, are vega-lite v5.

    python scripts/vendor_vega.py                  # npm pack the tarballs, write the files
    python scripts/vendor_vega.py --tarballs DIR   # use tarballs already in DIR (still verified)
    python scripts/vendor_vega.py --check          # exit 1 if the committed files differ
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
VENDOR = ROOT / ".dvc" / "plots" / "vendor"


@dataclass(frozen=True)
class Tarball:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:  # what `npm pack` names it (no scoped packages here)
        return f"{self.name}-{self.version}.tgz"


@dataclass(frozen=True)
class Script:
    package: Tarball
    path: str  # the UMD build inside the tarball, under package/
    licence: Tarball  # the tarball whose package/LICENSE is the package's licence text
    spdx: str


VEGA = Tarball(
    "vega",
    "5.33.1",
    "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
)
VEGA_LITE = Tarball(
    "vega-lite",
    "5.23.0",
    "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
)
VEGA_EMBED = Tarball(
    "vega-embed",
    "6.29.0",
    "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
)
# vega 5.33.1's tarball ships no LICENSE file (5.33.0's did). The text is the vega monorepo's,
# taken from vega-view, one of its packages bundled into vega.min.js (the same text, byte for
# byte, as vega 5.33.0's LICENSE). Point this back at VEGA once a vega tarball carries it again.
VEGA_LICENCE = Tarball(
    "vega-view",
    "5.16.1",
    "sha512-YyG4i2JDkRCacHd9xNAwyov2cELxwzPGY224PA2o0gEhkoOjPkVElTmo9QHJvKeVxMoyad6wvoq+Jj+TB6zhLw==",
)

# In load order: vega-lite needs vega, vega-embed needs both.
SCRIPTS = (
    Script(VEGA, "build/vega.min.js", VEGA_LICENCE, "BSD-3-Clause"),
    Script(VEGA_LITE, "build/vega-lite.min.js", VEGA_LITE, "BSD-3-Clause"),
    Script(VEGA_EMBED, "build/vega-embed.min.js", VEGA_EMBED, "BSD-3-Clause"),
)

# dvc-render's HTML.embed() replaces these in the template (str.replace, every occurrence, in the
# inlined scripts too): {plot_divs} is required; {scripts} (DVC's CDN <script> tags) is left out.
PLOTS_PLACEHOLDER = "{plot_divs}"
REFRESH_PLACEHOLDER = "{refresh_tag}"
PLACEHOLDERS = ("{scripts}", PLOTS_PLACEHOLDER, REFRESH_PLACEHOLDER)
# What would end a <script> element early or change how the HTML parser reads its text.
UNSAFE_IN_SCRIPT = re.compile(r"</script|<script|<!--", re.IGNORECASE)
SOURCE_MAP = re.compile(r"\n//# sourceMappingURL=[^\n]*\n?\Z")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- DVC's plots page, with the scripts inlined so that it draws with no network:
         {inlined}.
         Written by scripts/vendor_vega.py from the npm tarballs (licences: .dvc/plots/vendor/);
         edit that script, not this file. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(tarballs: list[Tarball], folder: Path, given: Path | None) -> dict[Tarball, bytes]:
    """Each tarball's bytes, from ``given`` or else `npm pack`, refused unless its sha512 fits."""
    found = {}
    for tarball in tarballs:
        path = (given or folder) / tarball.filename
        if given is None and not path.exists():
            subprocess.run(
                ["npm", "pack", tarball.spec, "--pack-destination", str(folder), "--silent",
                 "--ignore-scripts"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        data = path.read_bytes()
        if integrity(data) != tarball.integrity:
            raise SystemExit(
                f"{path}: integrity {integrity(data)}, not the pinned {tarball.integrity}: "
                "refusing it (a wrong version, a corrupt download or a tampered tarball)"
            )
        found[tarball] = data
    return found


def member(data: bytes, path: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        extracted = archive.extractfile(f"package/{path}")
        if extracted is None:
            raise SystemExit(f"package/{path} is not a file in the tarball")
        return extracted.read().decode("utf-8")


def inline(script: Script, code: str, licence: str) -> str:
    """One <script> element: a banner with the provenance and licence text, then the code."""
    code = SOURCE_MAP.sub("\n", code)  # the .map files are not vendored
    package = script.package
    for text, what in ((code, script.path), (licence, "its LICENSE")):
        if bad := UNSAFE_IN_SCRIPT.search(text):
            raise SystemExit(f"{package.spec}: {what} holds {bad.group()!r}; it cannot be inlined")
        if used := [p for p in PLACEHOLDERS if p in text]:
            raise SystemExit(f"{package.spec}: {what} holds DVC's placeholder {used[0]}")
    if "*/" in licence:
        raise SystemExit(f"{package.spec}: its LICENSE holds '*/'")
    banner = (
        f"/*! {package.spec} {script.path} ({script.spdx}), from the npm tarball "
        f"{package.filename} ({package.integrity}).\n\n{licence.strip()}\n*/"
    )
    return f"<script>{banner}\n{code.rstrip()}\n</script>"


def manifest() -> str:
    rows = "\n".join(
        f"| {s.package.name} | {s.package.version} | `{s.path}` | {s.spdx} "
        f"| `LICENSE.{s.package.name}` | `{s.package.integrity}` |"
        for s in SCRIPTS
    )
    return f"""# Vendored vega, vega-lite and vega-embed

`../offline.html`, the page that `dvc plots show` and `dvc plots diff` fill (`.dvc/config`:
`plots.html_template`), holds these scripts inline, each after a comment with its licence text.
Written with this folder by `scripts/vendor_vega.py` from the npm tarballs, each checked against
its npm integrity: edit that script to upgrade, not these files.

| package | version | file inlined | licence | text | npm integrity of the tarball |
| --- | --- | --- | --- | --- | --- |
{rows}

vega {VEGA.version}'s tarball ships no LICENSE file: `LICENSE.vega` is the vega monorepo's text
from {VEGA_LICENCE.spec} (`{VEGA_LICENCE.integrity}`), one of its packages bundled into
`vega.min.js`. Each `//# sourceMappingURL` comment is dropped (the maps are not vendored).

The minified bundles also contain the packages they were built from, under their own permissive
licences, whose texts are not copied here: among others d3 modules, delaunator and
topojson-client (ISC) in vega; json-stringify-pretty-compact (MIT) in vega-lite; vega-themes,
vega-tooltip (BSD-3-Clause), fast-json-patch (MIT) and semver (ISC) in vega-embed.
"""


def build(folder: Path, given: Path | None) -> dict[Path, str]:
    """What this script writes: path -> text."""
    tarballs = list(dict.fromkeys(t for s in SCRIPTS for t in (s.package, s.licence)))
    data = fetch(tarballs, folder, given)
    files: dict[Path, str] = {}
    elements = []
    for script in SCRIPTS:
        licence = member(data[script.licence], "LICENSE")
        version = json.loads(member(data[script.package], "package.json"))["version"]
        if version != script.package.version:
            raise SystemExit(f"{script.package.spec}: its package.json says {version}")
        elements.append(inline(script, member(data[script.package], script.path), licence))
        files[VENDOR / f"LICENSE.{script.package.name}"] = licence
    inlined = ", ".join(s.package.spec for s in SCRIPTS)
    page = PAGE.format(
        refresh_tag=REFRESH_PLACEHOLDER,
        inlined=inlined,
        scripts="\n".join(elements),
        plot_divs=PLOTS_PLACEHOLDER,
    )
    for placeholder, count in (("{scripts}", 0), (PLOTS_PLACEHOLDER, 1), (REFRESH_PLACEHOLDER, 1)):
        assert page.count(placeholder) == count, placeholder
    files[TEMPLATE] = page
    files[VENDOR / "README.md"] = manifest()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarballs", type=Path, help="a folder holding the .tgz files")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = build(Path(folder), args.tarballs)
    if args.check:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        extra = set(VENDOR.iterdir()) - set(files) if VENDOR.is_dir() else set()
        for path in [*stale, *sorted(extra)]:
            print(f"differs from what {Path(__file__).name} writes: {path.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    if VENDOR.is_dir():
        shutil.rmtree(VENDOR)  # this script owns it: no licence of a package left behind
    VENDOR.mkdir(parents=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
