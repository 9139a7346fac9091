"""`make lint`: no function in pipeline/ or stages/ is longer than MAX_LINES, so that each does
one thing a reader can hold at once; a longer one is split into named steps."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 60
FOLDERS = ("pipeline", "stages")


def long_functions(root: Path) -> list[str]:
    """``path:line name (N lines)`` for every function over the limit, decorators excluded."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_LINES:
                        where = path.relative_to(root)
                        found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def main() -> int:
    found = long_functions(Path(__file__).resolve().parents[1])
    for line in found:
        print(f"{line}: over {MAX_LINES} lines; split it into named steps", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
