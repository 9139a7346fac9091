"""`make image-test`: build the CPU image and reproduce the pipeline in it, for real.

Runs the README's own `docker build` and `docker run` lines (the blocks marked
``<!-- image-test: ... -->`` in README.md), word for word, with the Docker client against
podman's Docker API, and checks that the container's `dvc repro` on a fresh clone gives the
outputs of a host run, hash for hash, and tags its MLflow runs with the image and its digest.

No registry is reachable here, so the build swaps one build argument, BASE_IMAGE, for a Debian
bookworm root file system made on the spot with ``debootstrap``; that base also carries what this
network needs and a site's own base image would: its extra CA certificates and an
``/etc/pip.conf`` whose find-links serves torch's +cpu wheel from this machine's disk (PyTorch's
index, which serves the same file, cannot be reached). Everything podman writes stays under one
folder (``--dir``, default ``.image-test/``), which each run empties first.

Needs root and Debian's podman, buildah, runc and debootstrap, plus the Docker CLI.
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


def log(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    STAGES_TIMED[name] = round(time.monotonic() - started, 1)
    log(f"{name}: {STAGES_TIMED[name]} s")


def run(command: list[str] | str, **kwargs) -> subprocess.CompletedProcess:
    shown = command if isinstance(command, str) else shlex.join(command)
    log(f"$ {shown}")
    return subprocess.run(command, check=True, **kwargs)


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
        ).stdout.strip()
    )
    folder = Path(configured or "/opt/wheels")
    if not list(folder.glob("torch-*+cpu-*.whl")):
        raise SystemExit(f"no torch +cpu wheel in {folder} (pip's find-links): cannot build here")
    return folder


def write_podman_config(folder: Path) -> dict[str, str]:
    """containers.conf and storage.conf under FOLDER; the environment that points at them."""
    hard_nofile = int(
        subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout
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
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["podman", "import", "-", LOCAL_BASE],
            stdin=tar.stdout,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        tar.wait()
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


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear in {seconds} s")
        time.sleep(0.2)


def docker(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["docker", *args], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def check_ui(line: str, as_user: list[str], checkout: Path, env: dict[str, str]) -> list[str]:
    """Run the README's UI line in the background; the UI must list the checkout's experiment."""
    port = int(re.search(r"-p 127\.0\.0\.1:(\d+):", line)[1])
    base = f"http://127.0.0.1:{port}"
    problems = []
    command = [*as_user, "bash", "-c", f"exec {line}"]
    with background(command, checkout.parent / "ui.log", cwd=checkout, env=env):
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    pass
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
                problems.append(f"the containerised UI lists {names}, not lr-schedulers")
        finally:
            # This podman serves only this test: every running container is the UI's.
            for container in docker(env, "ps", "-q").split():
                docker(env, "stop", "--time", "3", container)
    return problems


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".image-test")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("image-test needs root (podman as root, debootstrap)")
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
            subprocess.run(["podman", "system", "reset", "--force"], env=old, check=False)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    env = {**os.environ, **write_podman_config(folder)}
    env.pop("MLFLOW_TRACKING_URI", None)

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
            run(["bash", "-c", build], cwd=ROOT, env=client_env)
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
        cuda = docker(
            client_env,
            "run",
            "--rm",
            tag,
            "python",
            "-c",
            "import torch, importlib.metadata as m; print(torch.__version__, torch.version.cuda,"
            " sorted(d.metadata['Name'] for d in m.distributions()"
            " if d.metadata['Name'].startswith('nvidia')))",
        )
        log(f"torch in the image: {cuda}")
        if cuda != "2.13.0+cpu None []":
            problems.append(f"the CPU image carries CUDA: {cuda}")

        # The README's run line, in a fresh clone owned by an unprivileged user who runs it.
        in_container = folder / "container-run"
        run(["git", "clone", "--quiet", str(ROOT), str(in_container)])
        run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(in_container)])
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        user_env = {**client_env, "HOME": str(folder / "docker-config")}
        with timed("docker run: dvc repro"):
            run([*as_nobody, "bash", "-c", run_line[0]], cwd=in_container, env=user_env)

        # The README's UI line, on the checkout the container just reproduced.
        with timed("docker run: lrsched ui"):
            ui_line = readme_block("ui-cpu")[0]
            problems += check_ui(ui_line, as_nobody, in_container, user_env)

    # The same commit on the host, with the host's venv.
    on_host = folder / "host-run"
    run(["git", "clone", "--quiet", str(ROOT), str(on_host)])
    host_env = {**env, "PATH": f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"}
    with timed("host: dvc repro"):
        run(["dvc", "repro"], cwd=on_host, env=host_env)

    container_outs, host_outs = lock_outs(in_container), lock_outs(on_host)
    committed = lock_outs(ROOT)
    differ = sorted(k for k in host_outs if container_outs.get(k) != host_outs[k])
    for key in sorted(host_outs):
        log(f"  {key}: host {host_outs[key]}  container {container_outs.get(key)}")
    if differ or container_outs.keys() != host_outs.keys():
        problems.append(f"outputs differ between the container and the host: {differ}")
    log(
        "committed dvc.lock: "
        + ("the same outputs" if committed == host_outs else "differs (work in progress?)")
    )
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
    log("passed: the container reproduces the host run, output for output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
