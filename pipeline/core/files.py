"""Atomic file output, CSV text and content hashes.

A stage killed halfway must never leave a file that DVC or a later stage would trust, so every
output is written beside its destination and renamed into place (``os.replace`` is atomic on
POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


def _prefix(path: Path) -> str:
    # The writer's pid in the name lets a later writer tell abandoned leftovers from live ones.
    return f".{path.name}.{os.getpid()}."


def clear_abandoned(path: Path) -> list[Path]:
    """Remove what a killed writer of ``path`` left beside it; returns what was removed."""
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = leftover.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_abandoned(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A CSV document with Unix line ends, whatever the platform: the same rows, the same bytes.

    Values are written with ``str()``; a float that must read back exactly is passed as its
    ``repr()``, the shortest text that does."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


@contextlib.contextmanager
def staged_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_abandoned(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    try:
        yield staging
        if path.exists():
            retired = Path(
                tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
            )
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One digest over the contents of several files, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def md5_file(path: str | Path) -> str:
    """The file's MD5, as DVC records it in ``dvc.lock`` (``md5:``): a name for its content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()
