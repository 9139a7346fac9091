"""``exit_now`` ends a process as ``sys.exit`` does, minus the teardown: each script below runs
twice, once ending with ``sys.exit(code)`` (the reference: the interpreter's own exit) and once
with ``exit_now(code)``, and what can be observed from outside (the status, stdout, stderr, the
files written) must be the same. Only the teardown differs: an object's ``__del__`` that a
normal exit runs while it frees the modules is skipped.

That the commands end this way, and lose nothing, is checked where they run for real:
``tests/test_pipeline.py`` (every stage's process and its MLflow process) and every test that
reads a stage's outputs or records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

ENDINGS = {
    "sys.exit": "import sys; sys.exit(CODE)",
    "exit_now": "from pipeline.core.process_exit import exit_now; exit_now(CODE)",
}

# What a process leaves to its exit: each must come out whole.
SCRIPTS = {
    "buffered stdout to a pipe": """
import sys
for line in range(500):  # under the buffer's 8 KiB: to a pipe, it all waits for the exit's flush
    print("line", line)
sys.stderr.write("to stderr, unflushed")
""",
    "atexit handlers, last registered first": """
import atexit
for name in ("first", "second", "third"):
    atexit.register(print, "handler", name)
""",
    "a thread still running": """
import threading, time
def late():
    time.sleep(0.3)
    print("the thread finished")
threading.Thread(target=late).start()
""",
    "a child process still running": """
import multiprocessing, time
def child(path):
    time.sleep(0.3)
    open(path, "w").write("the child finished")
if __name__ == "__main__":
    multiprocessing.get_context("fork").Process(target=child, args=(OUT,)).start()
""",
    "a logging file handler": """
import logging
handler = logging.FileHandler(OUT)
logging.getLogger().addHandler(handler)
logging.getLogger().warning("logged, in the handler's buffer")
""",
}


def ended(script: str, ending: str, code: str, workdir: Path) -> tuple[int, str, str, str]:
    """Run ``script`` ended by ``ending``: its status, stdout, stderr and the file it wrote."""
    out = workdir / f"{ending}.txt"
    source = script.replace("OUT", repr(str(out))) + "\n" + ENDINGS[ending].replace("CODE", code)
    # Buffered, as stdout to a pipe is by default (this machine's shells may say otherwise).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", source], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    written = out.read_text() if out.exists() else ""
    return done.returncode, done.stdout, done.stderr, written


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_what_a_process_leaves_to_its_exit_comes_out_whole(script, tmp_path):
    reference = ended(script, "sys.exit", "None", tmp_path)
    assert reference[0] == 0 and any(reference[1:]), "the script must leave something behind"
    assert ended(script, "exit_now", "None", tmp_path) == reference


@pytest.mark.parametrize("code", ["0", "3", "'a message for stderr'", "None", "True"])
def test_the_status_is_the_one_sys_exit_gives(code, tmp_path):
    reference = ended("", "sys.exit", code, tmp_path)
    assert ended("", "exit_now", code, tmp_path) == reference


def test_only_the_teardown_is_skipped(tmp_path):
    """The control: the same script's ``__del__`` runs at a normal exit, and not at this one."""
    script = """
import atexit
class Freed:
    def __del__(self, print=print):
        print("freed by the teardown")
kept = Freed()
atexit.register(print, "the exit handler ran")
"""
    status, stdout, _, _ = ended(script, "sys.exit", "0", tmp_path)
    assert (status, stdout) == (0, "the exit handler ran\nfreed by the teardown\n")
    status, stdout, _, _ = ended(script, "exit_now", "0", tmp_path)
    assert (status, stdout) == (0, "the exit handler ran\n")
