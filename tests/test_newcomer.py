"""Every command a newcomer is shown runs as shown: in a fresh shell, the venv not activated.

The commands come from the files, so that one added later is run too: README.md's fenced ``sh``
blocks, the code spans of its opening paragraph and of its Commands section (table and text), and
the lines ``make run`` prints last. Each runs verbatim with ``bash -c`` from the root of a temp
copy of the project (tiny params; its ``.venv`` links to this checkout's venv), in the
environment a newly opened terminal has: no venv on ``PATH``, no ``VIRTUAL_ENV``. It must exit 0
and print what ``EXPECTED`` says. A code span that is neither a command known here nor a file of
the project fails the test, as does a printed line that is neither; what cannot run inside the
suite is in ``NOT_RUN``, with the reason. The UI server (``SERVERS``) is started, must answer
HTTP and serve the project's runs at the link ``make run`` printed, and is stopped.

What makes a bare shell enough is the venv's ``.pth`` line (the Makefile, ``$(VENV)/.path``):
the fast tests below check it in every way the venv's Python can start, and that ``make``
writes it into a venv made before it existed.

The slow test takes about 110 s on 2 shared cores: ``dvc repro`` and the experiment about 30 s
each (process starts and MLflow: the tiny params train in 0.2 s), the UI's start about 30 s, the
other commands a few seconds each. The fast ones take a second.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, GIT, ROOT, make_project, run, tiny_document
from tests.servers import stop, wait_for_http

README = ROOT / "README.md"
FRESH_PATH = "/usr/local/bin:/usr/bin:/bin"
PTH = "lrsched-venv-path.pth"  # the file the Makefile's $(VENV)/.path writes
STAMPS = (".runtime", ".test", ".path")  # the Makefile's stamps in the venv


@dataclass(frozen=True)
class Expected:
    order: int  # commands run by order, then by name: 0 writes what the later ones read
    prints: tuple[str, ...]  # regexes (multi-line) that its output, stdout and stderr, must match
    then: str = ""  # run after it in the same shell, to show what it did (activate prints nothing)


EXPECTED = {
    # The stages' `lrsched ...` found from a shell that has no venv on PATH: the .pth at work.
    ".venv/bin/dvc repro": Expected(
        0,
        (r"^> lrsched generate ", r"^> lrsched tune ", r"^> lrsched train ", r"^> lrsched plot "),
    ),
    "make run": Expected(1, (r"^Figures: ", r"^Metrics: ", r"^MLflow UI: ")),
    ".venv/bin/dvc metrics show": Expected(2, (r"^outputs/metrics\.json ", r"OneCycleLR\.rank")),
    ".venv/bin/dvc plots show": Expected(2, (r"dvc_plots/index\.html",)),
    ".venv/bin/lrsched schedulers": Expected(2, (r"\bCosineAnnealingLR\b",)),
    ".venv/bin/lrsched preview": Expected(2, (r"^ *schedule \\ step ", r"^ *OneCycleLR ")),
    ".venv/bin/lrsched validate": Expected(2, (r"^params\.yaml is valid: ",)),
    "source .venv/bin/activate": Expected(
        2, (r"^/\S+/\.venv/bin/dvc$", r"^/\S+/\.venv/bin/lrsched$"), "command -v dvc lrsched"
    ),
    ".venv/bin/dvc exp run -S train.lr=0.02": Expected(
        3, (r"^> lrsched train ", r"^> lrsched plot ", r"^Ran experiment\(s\): ")
    ),
    ".venv/bin/dvc status": Expected(2, (r"up to date",)),
    ".venv/bin/dvc params diff": Expected(4, (r"^params\.yaml +train\.lr +0\.01 +0\.02$",)),
}
# Servers: started, checked, stopped. The link: what `make run` prints after "then open".
SERVERS = {".venv/bin/lrsched ui": 2}
UI = "http://127.0.0.1:5000"
NOT_RUN = {
    "make test": "the whole suite, this test included: it cannot run inside itself (.ci/run)",
    "make check": "lint and the fast half of this suite: `make test` runs both, not a test",
    "make bench": "minutes of full-size training, timed: a measurement, not a check",
    "make image-test": "builds the CPU image with podman, 12 to 17 minutes, as root: .ci/run",
    ".venv/bin/dvc exp run -f -S execution.engine=ray -S execution.address=HEAD:6379": (
        "needs a Ray cluster at HEAD: tests/test_ray_cluster.py runs it against a real one"
    ),
}
# A fenced block marked <!-- image-test: NAME --> is run word for word by `make image-test`.
IMAGE_TEST = "the docker command `make image-test` runs word for word (scripts/image_test.py)"
# A code span outside those sections that starts so is a command, and must run as shown.
COMMAND_START = r"(\.venv/bin/|dvc |lrsched |mlflow |make |python |pytest |docker )"
REQUIRED = ("make run", ".venv/bin/dvc repro", ".venv/bin/dvc exp run -S train.lr=0.02")


@dataclass(frozen=True)
class Shown:
    command: str  # verbatim, as the reader would paste it
    where: str
    not_run: str = ""  # why it is not run here, for a fenced block the marker excludes

    @property
    def key(self) -> str:
        """The command without a trailing comment and with its spaces collapsed."""
        return " ".join(re.sub(r"\s#.*$", "", self.command.replace("\\\n", " ")).split())


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def readme_shown() -> list[Shown]:
    """The README's fenced sh blocks, and the code spans of its opening and Commands section."""
    text = README.read_text()
    shown = []
    fence = re.compile(r"(?:<!-- (?P<marker>[^\n]*?) -->\n)?^```sh\n(?P<body>.*?)^```", re.S | re.M)
    for block in fence.finditer(text):
        marker = block["marker"] or ""
        not_run = IMAGE_TEST if marker.startswith("image-test:") else ""
        offset = block.start("body")
        for command in re.split(r"(?<!\\)\n", block["body"].rstrip("\n")):
            if command.strip():
                shown.append(Shown(command, f"README.md:{_line(text, offset)}", not_run))
            offset += len(command) + 1
    first = text.index("\n## ")
    start = text.index("\n## Commands\n")
    end = text.index("\n## ", start + 1)
    prose = re.sub(r"^```.*?^```", lambda m: " " * len(m[0]), text, flags=re.S | re.M)
    for span in re.finditer(r"`([^`\n]+)`", prose):
        # Every span of the opening and the Commands section; elsewhere, every span that is a
        # command (it starts with a program a reader would type).
        in_sections = span.start() < first or start <= span.start() < end
        if in_sections or re.match(COMMAND_START, span[1]):
            shown.append(Shown(span[1], f"README.md:{_line(text, span.start())}"))
    return shown


def fresh_env(home: Path) -> dict[str, str]:
    """A newly opened terminal's: no venv on PATH, no VIRTUAL_ENV (DVC told not to phone home)."""
    return {"HOME": str(home), "PATH": FRESH_PATH, "DVC_NO_ANALYTICS": "1"}


def newcomer_project(tmp_path: Path) -> Path:
    """A temp clone of the project: tiny params, the Makefile, and a .venv made of this one's.

    Its .venv links to everything in this checkout's venv but the stamps, which are its own and
    fresh: `make` there finds the venv up to date, and never installs into the shared one.
    """
    project = make_project(tmp_path / "project", tiny_document())
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "requirements", project / "requirements")
    (project / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/venv_path.py", project / "scripts/venv_path.py")
    env = fresh_env(tmp_path)
    run(["git", "config", "user.name", "newcomer"], project, env)
    run(["git", "config", "user.email", "newcomer@example.com"], project, env)
    run([*GIT, "add", "-A"], project, env)
    run([*GIT, "commit", "-qm", "make"], project, env)
    venv = project / ".venv"
    venv.mkdir()
    for entry in BIN.parent.iterdir():
        if entry.name not in STAMPS:
            (venv / entry.name).symlink_to(entry)
    _stamp_after_inputs(project, STAMPS)
    up_to_date = subprocess.run(
        ["make", "-q", ".venv/.path", ".venv/.test"], cwd=project, env=env, capture_output=True
    )
    assert up_to_date.returncode == 0, "make would install into the shared venv: stopping"
    return project


def _stamp_after_inputs(folder: Path, stamps: tuple[str, ...]) -> None:
    """The Makefile's inputs made two minutes old, the venv's stamps one: all up to date."""
    inputs = [
        "Makefile",
        "pyproject.toml",
        "scripts/venv_path.py",
        *(f"requirements/{r.name}" for r in (folder / "requirements").iterdir()),
    ]
    for names, age in ((inputs, 120), ([f".venv/{s}" for s in stamps], 60)):
        for name in names:
            (folder / name).touch()
            os.utime(folder / name, (time.time() - age, time.time() - age))


def _output(done: subprocess.CompletedProcess) -> str:
    return f"{done.stdout}\n{done.stderr}"


def _shell(command: str, project: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        env=fresh_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )


def printed_by_make_run(stdout: str) -> tuple[list[str], list[str]]:
    """The commands or paths, and the links, in the lines `make run` ends with."""
    last = stdout.rstrip("\n").rpartition("\n\n")[2].splitlines()
    assert last, f"make run printed no closing lines:\n{stdout}"
    shown, links = [], []
    for line in last:
        found = re.fullmatch(r"[A-Za-z][\w ]*: +(?P<value>\S.*)", line)
        assert found, f"make run printed a line that is not `Label: command`: {line!r}"
        first, *rest = re.split(r" {2,}", found["value"])
        shown.append(first)
        links += re.findall(r"https?://\S+", " ".join(rest))
        assert not re.search(r"https?://", first), f"a link where a command goes: {line!r}"
    return shown, links


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str, data: dict | None = None) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def check_server(command: str, links: list[str], project: Path, home: Path) -> str:
    """Start `command`, check that it answers HTTP and serves each link's runs; stop it."""
    address, port = UI, 5000
    if _port_in_use(port):  # another UI on this machine: the same command, on a free port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command, address = f"{command} --port {port}", f"http://127.0.0.1:{port}"
    log = project / "ui.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["bash", "-c", command],
            cwd=project,
            env=fresh_env(home),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"{address}/health", server, log)
        experiment = yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["experiment"]
        with urllib.request.urlopen(f"{address}/", timeout=30) as page:
            assert page.status == 200, f"{command}: {address}/ answered {page.status}"
        for link in links:
            found = re.fullmatch(re.escape(UI) + r"/#/experiments/(\d+)/runs", link)
            assert found, f"make run printed {link}, not {UI}/#/experiments/<id>/runs"
            api = f"{address}/api/2.0/mlflow"
            named = _get(f"{api}/experiments/get?experiment_id={found[1]}")["experiment"]["name"]
            assert named == experiment, f"{link} shows experiment {named!r}, not {experiment!r}"
            runs = _get(f"{api}/runs/search", {"experiment_ids": [found[1]]}).get("runs", [])
            assert runs, f"{link} shows no runs"
    finally:
        stop(server)
    return log.read_text()


def _stage_of(command: str) -> str | None:
    """`.venv/bin/lrsched NAME` where NAME is a dvc.yaml stage: the stage's command, else None."""
    found = re.fullmatch(r"\.venv/bin/(lrsched (\w+))", command)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    if found and found[2] in stages and stages[found[2]]["cmd"].startswith(f"{found[1]} "):
        return stages[found[2]]["cmd"]
    return None


def _is_file(span: str, project: Path) -> bool:
    """A path of the project (a glob, a folder, or what a command here wrote), or a variable."""
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", span):  # PATH, MLFLOW_TRACKING_URI
        return True
    if " " in span or span.startswith("-"):
        return False
    return any(glob.glob(span, root_dir=folder) for folder in (project, ROOT))


def _unrecognised(shown: Shown) -> str:
    word = shown.key.split()[0] if shown.key else ""
    hint = ""
    if (BIN / word).exists():
        hint = f": a fresh shell has no venv on PATH; write .venv/bin/{word}"
    return f"{shown.where}: {shown.command!r} is neither a command this test knows nor a file{hint}"


@pytest.mark.pipeline
def test_every_command_shown_runs_as_shown_in_a_fresh_shell(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    project = newcomer_project(tmp_path)
    bare = _shell("command -v dvc lrsched mlflow", project, home)
    assert not bare.stdout, f"the fresh PATH already has {bare.stdout}: nothing to prove"

    shown = readme_shown()
    keys = {s.key for s in shown}
    for required in REQUIRED:
        assert required in keys, f"README.md no longer shows `{required}`"

    pending: dict[str, Shown] = {}
    skipped: dict[str, str] = {}
    stage_commands: dict[str, str] = {}
    problems: list[str] = []
    files: list[Shown] = []

    done: set[str] = set()

    def take(item: Shown) -> None:
        key = item.key
        if key in done or key in pending or key in skipped or key in stage_commands:
            return
        if item.not_run or key in NOT_RUN:
            skipped[key] = item.not_run or NOT_RUN[key]
        elif key in EXPECTED or key in SERVERS:
            pending[key] = item
        elif stage := _stage_of(key):
            stage_commands[key] = stage
        else:
            files.append(item)  # a file, else unrecognised: told once every command has run

    for item in shown:
        take(item)

    outputs: dict[str, str] = {}
    links: list[str] = []
    timings: dict[str, float] = {}
    while pending:
        key = min(pending, key=lambda k: (EXPECTED[k].order if k in EXPECTED else SERVERS[k], k))
        item = pending.pop(key)
        done.add(key)
        started = time.monotonic()
        if key in SERVERS:
            outputs[key] = check_server(item.command, links, project, home)
            timings[key] = time.monotonic() - started
            continue
        expected = EXPECTED[key]
        command = f"{item.command}\n{expected.then}" if expected.then else item.command
        completed = _shell(command, project, home)
        timings[key] = time.monotonic() - started
        output = outputs[key] = _output(completed)
        hint = " (the venv's .pth missing? `make check` writes it)" if "not found" in output else ""
        assert completed.returncode == 0, (
            f"{item.where}: `{item.command}` exited {completed.returncode} in a fresh shell"
            f"{hint}:\n{output[-4000:]}"
        )
        for pattern in expected.prints:
            assert re.search(pattern, output, re.M), (
                f"{item.where}: `{item.command}` did not print /{pattern}/:\n{output[-4000:]}"
            )
        if key == "make run":
            printed, links = printed_by_make_run(completed.stdout)
            for value in printed:
                take(Shown(value, "make run"))
            assert links, "make run printed no link to the project's runs"

    # The stages, which the README names without the paths dvc.yaml gives them: run, as DVC runs
    # them, by `.venv/bin/dvc repro` above.
    for command, stage in stage_commands.items():
        assert f"> {stage}" in outputs[".venv/bin/dvc repro"], f"{command}: its stage did not run"
    for item in files:
        if not _is_file(item.key, project):
            problems.append(_unrecognised(item))
    assert not problems, "\n".join(problems)
    summary = ", ".join(f"{k} {t:.1f} s" for k, t in timings.items())
    print(f"ran: {summary}\nnot run: {skipped}\nstages (by dvc repro): {sorted(stage_commands)}")


# The fast checks of the mechanism: the venv's Python puts its bin first on PATH for what it
# starts, however it was started, and `make` gives an existing venv the line.


def _venv_path(*args: str, path: str = FRESH_PATH, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(BIN / "python"), *args],
        cwd=cwd,
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


PRINT_PATH = "import os; print(os.environ['PATH'])"


@pytest.mark.parametrize("flags", [[], ["-I"], ["-E"], ["-s"]], ids=["plain", "-I", "-E", "-s"])
def test_the_venv_puts_its_bin_first_for_what_it_starts(flags: list[str]):
    found = (BIN.parent / "lib").glob(f"python*/site-packages/{PTH}")
    assert any(found), f"{BIN.parent} has no {PTH}: run `make check` (it writes it)"
    assert _venv_path(*flags, "-c", PRINT_PATH) == f"{BIN}:{FRESH_PATH}"


def test_it_is_not_added_twice_and_a_spawned_child_applies_it_itself(tmp_path: Path):
    assert _venv_path("-c", PRINT_PATH, path=f"{BIN}:/bin") == f"{BIN}:/bin"
    script = tmp_path / "spawn.py"
    script.write_text(
        "import multiprocessing, os, shutil\n"
        "def report(queue):\n"
        "    queue.put((os.environ['PATH'], shutil.which('lrsched')))\n"
        "if __name__ == '__main__':\n"
        "    os.environ['PATH'] = '/usr/bin:/bin'  # what the child inherits: no venv\n"
        "    context = multiprocessing.get_context('spawn')\n"
        "    queue = context.Queue()\n"
        "    child = context.Process(target=report, args=(queue,))\n"
        "    child.start()\n"
        "    print(*queue.get())\n"
        "    child.join()\n"
    )
    assert _venv_path("-I", str(script), cwd=tmp_path).split() == [
        f"{BIN}:/usr/bin:/bin",
        str(BIN / "lrsched"),
    ]


def test_make_writes_the_line_into_a_venv_made_before_it(tmp_path: Path):
    """A venv whose install stamps are fresh but that predates the .pth gets it from `make`."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/venv_path.py", tmp_path / "scripts/venv_path.py")
    venv = tmp_path / ".venv"
    site = venv / "lib" / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    python = venv / "bin" / "python"  # a stand-in: all make asks it is where site-packages is
    python.write_text(f"#!/bin/sh\necho {site}\n")
    python.chmod(0o755)
    _stamp_after_inputs(tmp_path, (".runtime", ".test"))
    env = {"HOME": str(tmp_path), "PATH": FRESH_PATH}
    for target in ("run", "check"):
        planned = run(["make", "-n", target], tmp_path, env).stdout
        assert PTH in planned, f"make {target} on an old venv would not write {PTH}:\n{planned}"
        assert "pip install" not in planned, f"make {target} would reinstall:\n{planned}"
    run(["make", ".venv/.path"], tmp_path, env)
    line = (site / PTH).read_text()
    assert line == "import _lrsched_venv_path\n"  # what site.py executes
    assert (site / "_lrsched_venv_path.py").read_bytes() == (
        ROOT / "scripts/venv_path.py"
    ).read_bytes()
    # The line, run by the venv's interpreter without its site-packages (-S): the venv's bin first.
    shown = _venv_path(
        "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {line.strip()}; {PRINT_PATH}"
    )
    assert shown == f"{BIN}:{FRESH_PATH}"
    run(["make", "-q", ".venv/.path"], tmp_path, env)  # up to date now
    _stamp_after_inputs(tmp_path, (".runtime", ".test", ".path"))
    (tmp_path / "Makefile").touch()  # edited since: its line is written again
    assert PTH in run(["make", "-n", "run"], tmp_path, env).stdout
