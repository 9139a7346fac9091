"""The docs cannot drift: shown output is what the command prints, every link resolves.

A block of command output in README.md or docs/*.md is marked with the command that prints it:

    <!-- output: lrsched preview -->
    ```
    ...exactly what `lrsched preview` prints...
    ```

The command runs under bash (``set -e``, several lines allowed) in a fresh folder holding a copy
of the project's params.yaml, with a fresh MLflow store, no GPU visible (so ``train.device: auto``
trains on the CPU, as the docs say) and 80 columns unless the command sets ``COLUMNS``. Its
standard output must equal the block, line for line; spaces at line ends are ignored (rich pads
table cells). What truly varies from run to run is ignored only where the marker says so:
``<!-- output (varies: timings, run id, store): ... -->`` (the regexes are ``VARIES`` below). A
command that is meant to fail says which status it exits with: ``(exit 1)``; one that takes
seconds (it imports torch) is left out of the quick loop: ``(slow)``. Options are separated by
``;``. The block that trains shows x86-64's bytes, and is skipped on other machines.
"""

from __future__ import annotations

import difflib
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, count_per_file, project_env, whole_suite

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000

# What may differ between the docs and a run, each replaced by a placeholder on both sides.
VARIES = {
    "timings": (re.compile(r"\b\d+(?:\.\d+)? s\b"), "<seconds> s"),
    "run id": (re.compile(r"\b[0-9a-f]{32}\b"), "<run id>"),
    "store": (re.compile(r"sqlite:///\S*?mlflow\.db"), "sqlite:///<folder>/mlflow.db"),
}
MARKER = re.compile(
    r"<!-- output(?: \((?P<options>[^)]*)\))?:\s*(?P<command>.*?)\s*-->\n"
    r"```[^\n]*\n(?P<shown>.*?)```",
    re.S,
)
# Outputs the docs must keep showing (and so keep checked): a line of a marker's command.
REQUIRED = {
    "lrsched --help": r"^lrsched --help$",
    "lrsched schedulers": r"^(COLUMNS=\d+ )?lrsched schedulers$",
    "lrsched preview": r"^lrsched preview$",
    "lrsched train": r"^lrsched train --train ",
}


@dataclass(frozen=True)
class Shown:
    page: Path
    line: int
    command: str
    shown: str
    varies: tuple[str, ...]
    status: int
    slow: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _shown_blocks() -> list[Shown]:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for found in MARKER.finditer(text):
            varies, status, slow = (), 0, False
            for option in filter(None, (o.strip() for o in (found["options"] or "").split(";"))):
                if option == "slow":
                    slow = True
                elif option.startswith("varies:"):
                    varies = tuple(v.strip() for v in option.removeprefix("varies:").split(","))
                elif option.startswith("exit "):
                    status = int(option.removeprefix("exit "))
                else:
                    raise AssertionError(f"{page.name}: unknown marker option {option!r}")
            line = text.count("\n", 0, found.start()) + 1
            command, shown = found["command"], found["shown"]
            blocks.append(Shown(page, line, command, shown, varies, status, slow))
    return blocks


BLOCKS = _shown_blocks()


def _normalised(text: str, varies: tuple[str, ...]) -> list[str]:
    for name in varies:
        pattern, placeholder = VARIES[name]
        text = pattern.sub(placeholder, text)
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


_printed: dict[str, subprocess.CompletedProcess] = {}


def _print(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """What ``command`` prints in a fresh folder with the project's params; once per command."""
    if command not in _printed:
        shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
        env = project_env(tmp_path)
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
            CUDA_VISIBLE_DEVICES="",
            COLUMNS="80",
        )
        env.pop("LINES", None)
        _printed[command] = subprocess.run(
            ["bash", "-c", f"set -e\n{command}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    return _printed[command]


def _marks(block: Shown) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.pipeline] if block.slow else []
    if re.search(REQUIRED["lrsched train"], block.command, re.M):
        marks.append(
            pytest.mark.skipif(
                platform.machine() not in ("x86_64", "AMD64"),
                reason="the losses shown are x86-64's bytes (docs/reproducibility.md)",
            )
        )
    return marks


@pytest.mark.parametrize("block", [pytest.param(b, marks=_marks(b), id=b.id) for b in BLOCKS])
def test_shown_output_is_what_the_command_prints(block: Shown, tmp_path: Path):
    done = _print(block.command, tmp_path)
    assert done.returncode == block.status, (
        f"{block.id}: `{block.command}` exited {done.returncode}, not {block.status}:\n"
        f"{done.stdout}\n{done.stderr}"
    )
    shown = _normalised(block.shown, block.varies)
    printed = _normalised(done.stdout, block.varies)
    diff = "\n".join(difflib.unified_diff(shown, printed, "docs", "printed", lineterm=""))
    assert shown == printed, f"{block.id}: the docs no longer show what it prints:\n{diff}"


def test_the_docs_show_each_commands_output():
    for required, line in REQUIRED.items():
        assert any(re.search(line, b.command, re.M) for b in BLOCKS), (
            f"no marked block shows what `{required}` prints"
        )


def test_the_readme_is_a_five_minute_read():
    size = len((ROOT / "README.md").read_text())
    assert size <= README_LIMIT, f"README.md is {size} characters; move detail to docs/"


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", _without_fences(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        prose = re.sub(r"`[^`\n]*`", "", _without_fences(page.read_text()))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_every_test_file_is_described_in_the_testing_page():
    testing = (ROOT / "docs" / "testing.md").read_text()
    for test_file in sorted((ROOT / "tests").glob("test_*.py")):
        assert f"`{test_file.name}`" in testing, f"docs/testing.md does not describe {test_file}"


def _documented_defaults() -> dict[str, str]:
    """docs/params.md's key table: key -> the first `code` of its default column."""
    rows = {}
    for line in (ROOT / "docs/params.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            default = re.match(r"`([^`]*)`", cells[1])
            rows[cells[0].strip("`")] = default.group(1) if default else cells[1]
    return rows


def _yaml_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(item) for item in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _model_defaults(model: type, prefix: str = "") -> dict[str, str]:
    """Every leaf key of a params section (a pydantic model) -> its default, as YAML spells it."""
    from pydantic import BaseModel

    leaves = {}
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            leaves.update(_model_defaults(type(default), f"{prefix}{name}."))
        elif not info.is_required():
            leaves[f"{prefix}{name}"] = _yaml_text(default)
    return leaves


def test_the_params_reference_states_each_keys_default_as_the_code_has_it():
    from pipeline.config.params import _RawParams

    documented = _documented_defaults()
    sections = ("seed", "data", "model", "train", "mlflow", "analysis", "tuning", "execution")
    code = {
        key: value
        for key, value in _model_defaults(_RawParams).items()
        if key.split(".")[0] in sections
    }
    assert code, "no keys found in the params models"
    missing = sorted(set(code) - set(documented))
    assert not missing, f"docs/params.md has no row for {missing}"
    wrong = {
        key: (documented[key], value) for key, value in code.items() if documented[key] != value
    }
    assert not wrong, f"docs/params.md's default (documented, code) differs: {wrong}"


def _collected_apart() -> dict[str, int]:
    """The suite's tests per file, collected by a pytest of its own (this session ran a part)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return count_per_file(line for line in listed.splitlines() if "::" in line)


def test_the_time_table_lists_every_test_file_as_pytest_collects_it(pytestconfig):
    """docs/testing.md's measured times (scripts/test_times.py) cover the suite as it is now."""
    testing = (ROOT / "docs" / "testing.md").read_text()
    block = testing.split("<!-- test-times: begin -->")[1].split("<!-- test-times: end -->")[0]
    documented = {
        row[0].strip(" `"): int(row[1])
        for row in (line.strip("| ").split(" | ") for line in block.splitlines())
        if row[0].startswith("`test_")
    }
    collected = whole_suite(pytestconfig) or _collected_apart()
    assert documented == collected, "docs/testing.md's time table is stale: run `make test-times`"
