"""Write docs/testing.md's time table from a measured run of the suite.

    .venv/bin/pytest --junitxml=test-artifacts/suite.xml
    .venv/bin/python scripts/test_times.py test-artifacts/suite.xml

(`make test-times` does both.) The table between the ``test-times`` markers gets one row per test
file: its tests, its seconds (setup, call and teardown, as pytest's JUnit report times them) and
the kinds of its slow tests, then a row per kind and the total. ``tests/test_docs.py`` checks
that the table lists every test file with the number of tests pytest collects from it, so a
file added or grown without a new measurement fails there.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import KINDS  # noqa: E402  (the suite's own list of kinds)

TESTING = ROOT / "docs" / "testing.md"
BEGIN, END = "<!-- test-times: begin -->", "<!-- test-times: end -->"


def kinds_by_test() -> dict[str, set[str]]:
    """Test id -> its kind markers, as pytest collects them (``-m KIND`` once per kind)."""
    found: dict[str, set[str]] = defaultdict(set)
    for kind in KINDS:
        listed = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", kind, "-p",
             "no:cacheprovider"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for line in listed.splitlines():
            if "::" in line:
                found[line.strip()].add(kind)
    return found


def measured(report: Path) -> tuple[Counter[str], Counter[str], dict[str, float]]:
    """From a JUnit report: tests per file, seconds per file, and seconds per test id."""
    tests: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    per_test = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        name = f"{module[-1]}.py"
        tests[name] += 1
        seconds[name] += float(case.get("time", 0))
        per_test[f"tests/{name}::{case.get('name')}"] = float(case.get("time", 0))
    return tests, seconds, per_test


def table(report: Path) -> str:
    tests, seconds, per_test = measured(report)
    kinds = kinds_by_test()
    file_kinds: dict[str, set[str]] = defaultdict(set)
    kind_seconds: Counter[str] = Counter()
    for test_id, test_kinds in kinds.items():
        file_kinds[test_id.split("::")[0].removeprefix("tests/")] |= test_kinds
        for kind in test_kinds:  # a test of two kinds counts in both
            kind_seconds[kind] += per_test.get(test_id, 0.0)
    lines = ["| file | tests | seconds | kinds of its slow tests |", "| --- | ---: | ---: | --- |"]
    for name, spent in seconds.most_common():
        shown = ", ".join(k for k in KINDS if k in file_kinds[name]) or "(all fast)"
        lines.append(f"| `{name}` | {tests[name]} | {spent:.1f} | {shown} |")
    fast = sum(spent for test_id, spent in per_test.items() if test_id not in kinds)
    lines += [
        "",
        "| kind | seconds |",
        "| --- | ---: |",
        *(f"| `{kind}` | {kind_seconds[kind]:.1f} |" for kind in KINDS),
        f"| fast (no kind) | {fast:.1f} |",
        f"| **all {sum(tests.values())} tests** | **{sum(seconds.values()):.1f}** |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest's --junitxml report of the whole suite")
    args = parser.parse_args()
    text = TESTING.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{TESTING} has no {BEGIN} ... {END} block")
    TESTING.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table(args.report)}\n{END}", text))
    print(f"wrote the time table of {TESTING.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
