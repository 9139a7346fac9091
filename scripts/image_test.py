"""`make image-test`: build the CPU image and reproduce the pipeline in it, for real.

Runs the README's own `docker build` and `docker run` lines (the blocks marked
``<!-- image-test: ... -->`` in README.md), word for word, with the Docker client against
podman's Docker API, and checks that the container's `dvc repro` on a fresh clone gives the
outputs the committed ``dvc.lock`` holds, hash for hash (what a host run writes:
``tests/test_portability.py`` shows that), and tags its MLflow runs with the image and its digest.

No registry is reachable here, so the build swaps one build argument, BASE_IMAGE, for a Debian
bookworm root file system made on the spot with ``debootstrap``; that base also carries what this
network needs and a site's own base image would: its extra CA certificates and an
``/etc/pip.conf`` whose find-links serves torch's +cpu wheel from this machine's disk (PyTorch's
index, which serves the same file, cannot be reached). Everything podman writes stays under one
folder (``--dir``, default ``.image-test/``), which each run empties first.

Needs root and Debian's podman, buildah, runc and debootstrap, plus the Docker CLI.

Every engine call has a time limit; one that runs past it fails at once with a message naming the
command and the limit, and the script then ends that client, removes this podman's containers and
stops its service. Debian's podman 4.3 needs more than a limit on the README's ``docker run --rm``
lines: its Docker-compatible wait for ``condition=removed`` (what ``docker run --rm`` asks for)
polls the container's state every nanosecond until the container is gone (podman#18150, fixed in
4.6), so the service sits at 100% CPU the whole run, and should the container, once exited, never
be removed (``--rm``'s clean-up process, which conmon starts, takes the same database lock the
busy poll keeps taking, or fails), the client never returns. It also answers exit code 0 for
every such container (podman#18889, fixed in 4.6). So those lines run under a watchdog
(:class:`DockerRun`) that reads the container's fate from podman's own event log: the container's
exit code is the run's result, and a container that has exited but is still there after a grace
period is removed, which ends the wait. The script's own probe of the image uses ``podman run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "localhost/debian:bookworm"
NOBODY = 65534  # the container run's host user: not root, not the checkout's usual owner
STAGES_TIMED: dict[str, float] = {}

# Time limits, in seconds (about 10 minutes for the whole test on 2 cores, 4 of them the build).
DEBOOTSTRAP_LIMIT = 15 * 60
BUILD_LIMIT = 20 * 60  # the README's docker build: 3 to 7 minutes here
CONTAINER_REPRO_LIMIT = 15 * 60  # the README's docker run: dvc repro, 0.5 to 1.5 minutes here
PROBE_LIMIT = 2 * 60  # a short container: python -c "import torch ..."
ENGINE_LIMIT = 2 * 60  # inspect, ps, stop, rm, import, reset
EXITED_GRACE = 20.0  # how long a Docker client may wait on a container that has exited


class Timeout(SystemExit):
    """A command ran past its time limit (it has been ended)."""

    def __init__(self, command: str, limit: float, detail: str = "") -> None:
        super().__init__(
            f"[image-test] TIMEOUT: `{command}` did not finish within {limit:.0f} s"
            f"{': ' + detail if detail else ''}; ended it"
        )


def log(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    STAGES_TIMED[name] = round(time.monotonic() - started, 1)
    log(f"{name}: {STAGES_TIMED[name]} s")


def shown(command: list[str] | str) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and everything it started.

    SIGKILL, since the Docker client passes SIGTERM and SIGINT on to the container and stays.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run(
    command: list[str] | str,
    *,
    timeout: float,
    check: bool = True,
    quiet: bool = False,
    **kwargs,
) -> subprocess.CompletedProcess:
    """subprocess.run, in its own process group, ended with all it started after TIMEOUT s."""
    if not quiet:
        log(f"$ {shown(command)}")
    with subprocess.Popen(command, start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise Timeout(shown(command), timeout) from None
        except BaseException:
            kill_group(process)
            raise
    if check and process.returncode:
        if stderr:
            log(f"`{shown(command)}` said: {stderr.strip()}")
        raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def readme_block(marker: str) -> list[str]:
    """The commands of the fenced block after ``<!-- image-test: MARKER -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- image-test: {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    if not found:
        raise SystemExit(f"README.md has no block marked <!-- image-test: {marker} -->")
    joined = found[1].replace("\\\n", " ")
    return [
        " ".join(line.split())
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def pip_find_links() -> Path:
    """The folder of torch's +cpu wheel: pip's own find-links setting on this machine."""
    configured = (
        os.environ.get("PIP_FIND_LINKS")
        or subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
    )
    folder = Path(configured or "/opt/wheels")
    if not list(folder.glob("torch-*+cpu-*.whl")):
        raise SystemExit(f"no torch +cpu wheel in {folder} (pip's find-links): cannot build here")
    return folder


def write_podman_config(folder: Path) -> dict[str, str]:
    """containers.conf and storage.conf under FOLDER; the environment that points at them."""
    hard_nofile = int(
        subprocess.run(
            ["sh", "-c", "ulimit -Hn"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    nofile = min(20000, hard_nofile)
    (folder / "containers.conf").write_text(
        "# Written by scripts/image_test.py. crun refuses this host's cgroups: runc.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        "[network]\n"
        f'network_config_dir = "{folder}/cni"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{folder}/events.log"\n'
        f'tmp_dir = "{folder}/run/libpod"\n'
        f'static_dir = "{folder}/storage/libpod"\n'
        f'volume_path = "{folder}/storage/volumes"\n'
        f'image_copy_tmp_dir = "{folder}/tmp"\n'
    )
    (folder / "storage.conf").write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{folder}/storage"\n'
        f'runroot = "{folder}/run/storage"\n'
    )
    for sub in ("cni", "tmp", "docker-config"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # The packaged default bridge network, in our own folder.
    packaged = Path("/etc/cni/net.d/87-podman-bridge.conflist")
    if packaged.exists():
        shutil.copy(packaged, folder / "cni" / packaged.name)
    return {
        "CONTAINERS_CONF": str(folder / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
        "TMPDIR": str(folder / "tmp"),
    }


def make_local_base(folder: Path, env: dict[str, str], wheel_port: int) -> None:
    """debootstrap bookworm, made to look like the official image's apt set-up, imported."""
    rootfs = folder / "rootfs"
    with timed("debootstrap"):
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            timeout=DEBOOTSTRAP_LIMIT,
            stdout=subprocess.DEVNULL,
        )
    # The official image's sources: the release, its updates and its security archive.
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    # This network's extra CAs: the ca-certificates package the Dockerfile installs adds them.
    local_cas = rootfs / "usr/local/share/ca-certificates"
    local_cas.mkdir(parents=True, exist_ok=True)
    for certificate in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(certificate, local_cas / certificate.name)
    # pip: the system bundle (with those CAs), and torch's +cpu wheel served from this host.
    (rootfs / "etc/pip.conf").write_text(
        "[global]\n"
        "cert = /etc/ssl/certs/ca-certificates.crt\n"
        f"find-links = http://host.containers.internal:{wheel_port}/\n"
        "trusted-host = host.containers.internal\n"
        "# PyTorch's index cannot be reached from here: give up on it at once.\n"
        "retries = 1\n"
    )
    with timed("import base"):
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE, start_new_session=True
        )
        try:
            run(
                ["podman", "import", "-", LOCAL_BASE],
                timeout=5 * ENGINE_LIMIT,
                stdin=tar.stdout,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            tar.stdout.close()
            if tar.wait(timeout=ENGINE_LIMIT):
                raise SystemExit(f"tar of {rootfs} failed ({tar.returncode})")
        finally:
            if tar.poll() is None:
                kill_group(tar)
    shutil.rmtree(rootfs)


@contextlib.contextmanager
def background(command: list[str], logfile: Path, **kwargs) -> Iterator[subprocess.Popen]:
    log(f"$ {shlex.join(command)} &")
    with open(logfile, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def containers_removed(env: dict[str, str]) -> Iterator[None]:
    """On the way out, however it goes: no container of this test outlives it."""
    try:
        yield
    finally:
        try:
            podman(
                env,
                "rm",
                "--force",
                "--all",
                "--time",
                "0",
                check=False,
                quiet=True,
                stdout=subprocess.DEVNULL,
            )
        except Timeout as timeout:
            log(f"could not remove the containers: {timeout}")


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear in {seconds} s")
        time.sleep(0.2)


def docker(env: dict[str, str], *args: str, timeout: float = ENGINE_LIMIT) -> str:
    """A Docker client call that returns at once (not ``docker run``): its output."""
    return run(
        ["docker", *args],
        timeout=timeout,
        quiet=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ).stdout.strip()


def podman(env: dict[str, str], *args: str, timeout: float = ENGINE_LIMIT, **kwargs):
    """podman's own CLI on this test's storage, past the service (ENV without DOCKER_CONFIG)."""
    return run(["podman", *args], timeout=timeout, env=env, **kwargs)


class EventLog:
    """podman's event log (``events_logger = "file"``), read on from where it ended at creation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[dict]:
        """The events written since the last call (whole lines only)."""
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


class DockerRun:
    """A README ``docker run --rm`` line, run word for word by the Docker client, watched.

    The container is the first one podman's event log shows created after the client started
    (this podman serves only this test, one client at a time); its exit code comes from the
    ``died`` event (or conmon's exit file), not from the client, which podman 4.3 answers 0 for
    any ``--rm`` container (podman#18889). Should the client still be waiting EXITED_GRACE s
    after the container exited, the container is removed, which ends podman's wait for
    ``condition=removed`` (and its busy poll, podman#18150); should it wait on after that, it is
    killed. Past the time limit, the client is killed and the container removed.
    """

    def __init__(
        self,
        line: str,
        *,
        as_user: list[str],
        cwd: Path,
        client_env: dict[str, str],
        engine_env: dict[str, str],
        folder: Path,
        output: Path | None = None,
    ) -> None:
        self.line, self.engine_env, self.folder = line, engine_env, folder
        self.events = EventLog(folder / "events.log")
        self.container: str | None = None
        self.exit_code: int | None = None
        self.exited_at: float | None = None
        self.removed = False
        self.started = time.monotonic()
        log(f"$ {line}" + (f" > {output.name} &" if output else ""))
        out = open(output, "w") if output else None  # noqa: SIM115 (the client has its own copy)
        try:
            self.client = subprocess.Popen(
                [*as_user, "bash", "-c", line],
                cwd=cwd,
                env=client_env,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        finally:
            if out:
                out.close()

    def update(self) -> None:
        for event in self.events.read():
            if event.get("Type") != "container":
                continue
            if self.container is None and event.get("Status") == "create":
                self.container = event["ID"]
                log(f"  container {self.container[:12]} created")
            if event.get("ID") != self.container:
                continue
            if event.get("Status") == "died" and self.exit_code is None:
                self.exit_code = int(event.get("ContainerExitCode", 0))
                self.exited_at = time.monotonic()
            elif event.get("Status") == "remove":
                self.removed = True
        if self.container and self.exit_code is None:
            # conmon's own record, there even before any podman process has noticed the exit.
            exit_file = self.folder / "run" / "libpod" / "exits" / self.container
            with contextlib.suppress(OSError, ValueError):
                self.exit_code = int(exit_file.read_text().strip())
                self.exited_at = time.monotonic()

    def remove_container(self) -> None:
        """Remove the container (killing it should it still run); not there afterwards."""
        if not self.container or self.removed or not self.exists():
            self.removed = True
            return
        podman(
            self.engine_env,
            "rm",
            "--force",
            "--time",
            "0",
            self.container,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        if self.exists():
            raise SystemExit(f"[image-test] podman could not remove container {self.container}")
        self.removed = True

    def exists(self) -> bool:
        return not podman(
            self.engine_env, "container", "exists", self.container, check=False, quiet=True
        ).returncode

    def abort(self) -> None:
        """End the client and its container: after a timeout, an error, or an interrupt."""
        kill_group(self.client)
        self.update()
        with contextlib.suppress(Exception, SystemExit):  # not to hide why it is aborted
            self.remove_container()

    def wait(self, limit: float, stopped: bool = False) -> int:
        """The container's exit code (the client's, if no container ran) once both are done.

        STOPPED: the container was stopped on purpose (its exit code is the signal's).
        """
        deadline = self.started + limit
        forced_at = None
        try:
            while self.client.poll() is None:
                self.update()
                now = time.monotonic()
                if now > deadline:
                    state = (
                        f"the container had exited ({self.exit_code}) {now - self.exited_at:.0f} s"
                        " before, the Docker client was still waiting"
                        if self.exited_at is not None
                        else f"container {(self.container or 'none')[:12]} still running"
                    )
                    self.abort()
                    raise Timeout(self.line, limit, state)
                if self.exited_at is not None and now - self.exited_at > EXITED_GRACE:
                    if forced_at is None:
                        log(
                            f"  container {self.container[:12]} exited ({self.exit_code})"
                            f" {EXITED_GRACE:.0f} s ago, yet the Docker client waits on: podman"
                            " 4.3 did not remove it (podman#18150); removing it"
                        )
                        self.remove_container()
                        forced_at = now
                    elif now - forced_at > EXITED_GRACE:
                        log("  the Docker client still waits on a removed container: killed")
                        kill_group(self.client)
                time.sleep(0.5)
        except BaseException:
            self.abort()
            raise
        client_code = self.client.returncode
        self.update()
        # The event log may trail the client by a moment.
        settle = time.monotonic() + 10
        while self.container and self.exit_code is None and time.monotonic() < settle:
            time.sleep(0.2)
            self.update()
        self.remove_container()
        if self.exit_code is None:
            return client_code
        if client_code != self.exit_code and not stopped:
            log(
                f"  the Docker client exited {client_code}, container"
                f" {self.container[:12]} exited {self.exit_code}: the container's counts"
                " (podman 4.3 answers 0 for any --rm container, podman#18889)"
            )
        return self.exit_code


def check_ui(
    line: str,
    as_user: list[str],
    checkout: Path,
    client_env: dict[str, str],
    engine_env: dict[str, str],
    folder: Path,
) -> list[str]:
    """Run the README's UI line in the background; the UI must list the checkout's experiment."""
    port = int(re.search(r"-p 127\.0\.0\.1:(\d+):", line)[1])
    base = f"http://127.0.0.1:{port}"
    ui = DockerRun(
        line,
        as_user=as_user,
        cwd=checkout,
        client_env=client_env,
        engine_env=engine_env,
        folder=folder,
        output=checkout.parent / "ui.log",
    )
    try:
        problems = ask_ui(base, ui)
    except BaseException:
        ui.abort()
        raise
    if ui.client.poll() is None:
        # This podman serves only this test: every running container is the UI's.
        for container in docker(client_env, "ps", "-q").split():
            docker(client_env, "stop", "--time", "3", container)
    ui.wait(ENGINE_LIMIT, stopped=True)
    return problems


def ask_ui(base: str, ui: DockerRun) -> list[str]:
    """Wait for the UI at BASE; it must list the experiment lr-schedulers."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        ui.update()
        if ui.client.poll() is not None:
            return [f"the UI line ended ({ui.client.returncode}) before the UI answered"]
        if time.monotonic() > deadline:
            return [f"the MLflow UI did not answer on {base}/health within 120 s"]
        time.sleep(1)
    request = urllib.request.Request(
        f"{base}/ajax-api/2.0/mlflow/experiments/search",
        data=b'{"max_results": 100}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        names = [e["name"] for e in json.load(reply).get("experiments", [])]
    log(f"MLflow UI from the container, {base}: experiments {names}")
    if "lr-schedulers" not in names:
        return [f"the containerised UI lists {names}, not lr-schedulers"]
    return []


def lock_outs(checkout: Path) -> dict[str, str]:
    """Every output's md5 in a checkout's dvc.lock: ``stage:path`` -> hash."""
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out["md5"]
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
    }


def mlflow_tags(checkout: Path) -> list[dict[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{checkout / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    return [dict(run.data.tags) for run in runs]


def terminated(signum: int, frame: object) -> None:
    raise SystemExit(f"[image-test] stopped by signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".image-test")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("image-test needs root (podman as root, debootstrap)")
    # A SIGTERM (CI's time limit, `timeout`) unwinds like an error: the clean-up below runs.
    signal.signal(signal.SIGTERM, terminated)
    for tool in ("podman", "buildah", "runc", "debootstrap", "docker", "git", "setpriv"):
        if not shutil.which(tool):
            raise SystemExit(
                f"image-test needs {tool} (apt-get install podman buildah runc debootstrap)"
            )
    folder = args.dir.resolve()
    started = time.monotonic()

    # A fresh folder: podman's own reset first, so that no overlay mount outlives its files.
    if folder.exists():
        if (folder / "storage.conf").exists():
            old = {**os.environ, **write_podman_config(folder)}
            run(
                ["podman", "system", "reset", "--force"],
                timeout=5 * ENGINE_LIMIT,
                check=False,
                env=old,
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    env = {**os.environ, **write_podman_config(folder)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DOCKER_CONFIG", None)  # podman reads it too, and fails if it has no config.json

    build_line = readme_block("build-cpu")
    run_line = readme_block("run-cpu")
    assert len(build_line) == 1 and build_line[0].startswith("docker build "), build_line
    assert len(run_line) == 1 and run_line[0].startswith("docker run "), run_line
    tag = re.search(r"-t (\S+)", build_line[0])[1]

    wheels, port = pip_find_links(), free_port()
    make_local_base(folder, env, port)
    socket_path = folder / "podman.sock"
    with (
        background(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "0.0.0.0",
                "--directory",
                str(wheels),
            ],
            folder / "wheels-http.log",
        ),
        background(
            ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
            folder / "podman-service.log",
            env=env,
        ),
        containers_removed(env),
    ):
        wait_for(socket_path)
        socket_path.chmod(0o666)  # the container run's client is an unprivileged user
        client_env = {
            **env,
            "DOCKER_HOST": f"unix://{socket_path}",
            "DOCKER_CONFIG": str(folder / "docker-config"),
        }
        (folder / "docker-config").chmod(0o777)

        # The README's build line; only the base image differs.
        build = build_line[0].replace(
            "docker build ", f"docker build --build-arg BASE_IMAGE={LOCAL_BASE} ", 1
        )
        with timed("docker build"):
            run(["bash", "-c", build], timeout=BUILD_LIMIT, cwd=ROOT, env=client_env)
        image_id = docker(client_env, "image", "inspect", "--format", "{{.Id}}", tag)
        size = int(docker(client_env, "image", "inspect", "--format", "{{.Size}}", tag))
        base_size = int(docker(client_env, "image", "inspect", "--format", "{{.Size}}", LOCAL_BASE))
        config = json.loads(
            docker(client_env, "image", "inspect", "--format", "{{json .Config}}", tag)
        )
        log(
            f"{tag}: {image_id}, {size / 1e6:.0f} MB"
            f" ({(size - base_size) / 1e6:.0f} MB above the base)"
        )
        problems = []
        if config.get("User") in (None, "", "0", "root") or config["User"].startswith("0:"):
            problems.append(f"the image runs as {config.get('User')!r}, not a non-root user")
        if config.get("Cmd") != ["dvc", "repro"]:
            problems.append(f"the image's command is {config.get('Cmd')}, not dvc repro")
        # podman's own CLI, not the Docker client: see DockerRun for why.
        cuda = podman(
            env,
            "run",
            "--rm",
            tag,
            "python",
            "-c",
            "import torch, importlib.metadata as m; print(torch.__version__, torch.version.cuda,"
            " sorted(d.metadata['Name'] for d in m.distributions()"
            " if d.metadata['Name'].startswith('nvidia')))",
            timeout=PROBE_LIMIT,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
        log(f"torch in the image: {cuda}")
        if cuda != "2.13.0+cpu None []":
            problems.append(f"the CPU image carries CUDA: {cuda}")

        # The README's run line, in a fresh clone owned by an unprivileged user who runs it.
        in_container = folder / "container-run"
        run(["git", "clone", "--quiet", str(ROOT), str(in_container)], timeout=ENGINE_LIMIT)
        run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(in_container)], timeout=ENGINE_LIMIT)
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        user_env = {**client_env, "HOME": str(folder / "docker-config")}
        with timed("docker run: dvc repro"):
            repro = DockerRun(
                run_line[0],
                as_user=as_nobody,
                cwd=in_container,
                client_env=user_env,
                engine_env=env,
                folder=folder,
            )
            if code := repro.wait(CONTAINER_REPRO_LIMIT):
                raise SystemExit(f"[image-test] the README's docker run line failed ({code})")

        # The README's UI line, on the checkout the container just reproduced.
        with timed("docker run: lrsched ui"):
            ui_line = readme_block("ui-cpu")[0]
            problems += check_ui(ui_line, as_nobody, in_container, user_env, env, folder)

    # The committed lock is the promise: what any machine writes from this commit. That a host
    # run writes it is the suite's to show (test_portability.py, a fresh clone's `dvc repro`),
    # which CI runs before this; a second host run here would only repeat it.
    container_outs, committed = lock_outs(in_container), lock_outs(ROOT)
    differ = sorted(k for k in committed if container_outs.get(k) != committed[k])
    for key in sorted(committed):
        log(f"  {key}: committed {committed[key]}  container {container_outs.get(key)}")
    log("committed dvc.lock: " + (f"differs in {differ}" if differ else "the same outputs"))
    if differ or container_outs.keys() != committed.keys():
        problems.append(f"the container's outputs differ from the committed dvc.lock: {differ}")
    owners = {p.stat().st_uid for p in (in_container / "outputs").rglob("*")}
    if owners != {NOBODY}:
        problems.append(f"the container's outputs are owned by {owners}, not the caller {NOBODY}")

    tags = mlflow_tags(in_container)
    log(f"MLflow: {len(tags)} runs in the container's store")
    if not tags:
        problems.append("the container's MLflow store holds no run")
    for run_tags in tags:
        seen = (run_tags.get("docker.image"), run_tags.get("docker.digest"))
        if seen != (tag, image_id):
            problems.append(
                f"run {run_tags.get('mlflow.runName')} tagged {seen}, not {(tag, image_id)}"
            )
            break

    STAGES_TIMED["total"] = round(time.monotonic() - started, 1)
    summary = {
        "image": tag,
        "image_id": image_id,
        "image_size_mb": round(size / 1e6),
        "local_base_size_mb": round(base_size / 1e6),
        "added_to_base_mb": round((size - base_size) / 1e6),
        "seconds": STAGES_TIMED,
        "outputs_equal": not differ,
        "problems": problems,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if problems:
        log("FAILED:\n  " + "\n  ".join(problems))
        return 1
    log("passed: the container reproduces the committed dvc.lock, output for output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
