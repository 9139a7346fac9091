"""MLflow in a process of its own, so that its seconds overlap with the stage's own work.

Importing MLflow and opening its store take 3-5 s; importing torch and training take as long
again. A command starts a ``Tracker`` before it imports torch; the stage calls the tracker's
methods (one per record), goes on with its work, and collects the answers when it must know
them: before it writes an output that says the records are complete.

Each method sends its record and returns at once with a ``Reply``; ``Reply.get`` waits for the
answer. Records run one at a time, in the order sent. After one fails, the rest are refused at
once (rather than each waiting out a dead server's retries) except ``finish_parent``, which
closes the parent run FAILED. A failure is a ``RecordError`` whose subclass says how it failed.

The process is spawned, not forked: it inherits no torch threads and no open database
connections. If the stage dies, the process sees the pipe close, closes the parent run FAILED,
and ends. (Being spawned, it imports the caller's main module again: a script that starts a
``Tracker`` needs the usual ``if __name__ == "__main__":`` guard.)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

from pipeline.core.process_exit import exit_now
from pipeline.tracking.store import TrackingUnavailable

if TYPE_CHECKING:  # MLflow: imported in the MLflow process only
    from pipeline.tracking.records import Recorder
    from pipeline.tracking.store import DataFile, ModelToLog, Registration

# How long closing waits for the process to finish what it was sent (a FAILED close against a
# dead server waits out MLflow's HTTP retries).
CLOSE_TIMEOUT_S = 120

T = TypeVar("T")
P = ParamSpec("P")
RunStatus = Literal["FINISHED", "FAILED"]


class RecordError(Exception):
    """A record failed in the MLflow process: ``operation`` names it, ``message`` says what."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation, self.message = operation, message


class StoreUnavailable(RecordError):
    """The store could not be opened (or was never opened): nothing was recorded."""


class StoreLost(RecordError):
    """The store failed after it was opened: an MLflow or OS error, first line only."""


class Refused(RecordError):
    """Not attempted: an earlier record failed."""


class ProcessEnded(RecordError):
    """The MLflow process ended before it answered."""


class RecordBug(RecordError):
    """Any other exception: a bug in the recording code; ``message`` is its traceback."""


class Reply(Generic[T]):
    """The answer to one record, once the MLflow process has sent it."""

    def __init__(self, tracker: Tracker, operation: str) -> None:
        self._tracker, self.operation = tracker, operation
        self.done = False
        self._value: Any = None
        self._error: RecordError | None = None

    def get(self) -> T:
        """Wait for this answer (and every one before it); raise the ``RecordError`` it was."""
        while not self.done:
            self._tracker._receive()
        if self._error is not None:
            raise self._error
        return self._value

    def _settle(self, error: type[RecordError] | None, value: Any) -> None:
        self.done = True
        if error is None:
            self._value = value
        else:
            self._error = error(self.operation, value)
            raise self._error


class _Session:
    """What the MLflow process does for each record. Runs there, never in the stage."""

    def __init__(self) -> None:
        from pipeline.tracking import records  # MLflow: seconds to import, spent in this process

        self.records = records
        self.recorder: Recorder | None = None

    def _opened(self) -> Recorder:
        if self.recorder is None:
            raise TrackingUnavailable("no recorder: the store was never opened")
        return self.recorder

    def open_store(self, uri: str, experiment: str, pid: int) -> tuple[str, ...]:
        self.recorder = self.records.Recorder(uri, experiment, pid)
        return tuple(self.recorder.reaped)

    def start_parent(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        datasets: Sequence[DataFile],
    ) -> str:
        return self._opened().start(name, params, tags, datasets)

    def log_child(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        series: Mapping[str, Iterable[float]],
        final: Mapping[str, float],
        artifacts: Mapping[str, Path],
        datasets: Sequence[DataFile],
        model: ModelToLog | None,
    ) -> str:
        return self._opened().child(name, params, tags, series, final, artifacts, datasets, model)

    def register_model(
        self, run_name: str, model_name: str, tags: Mapping[str, str], score: float
    ) -> Registration:
        return self._opened().register(run_name, model_name, tags, score)

    def attach_text(self, text: str, name: str) -> None:
        self._opened().attach_text(text, name)

    def tag_parent(self, key: str, value: str) -> None:
        self._opened().tag(key, value)

    def finish_parent(self, status: RunStatus, reason: str | None = None) -> None:
        self._opened().finish(status, reason)

    def find_train_run(self, uri: str, experiment: str, metrics_digest: str) -> str | None:
        return self.records.find_train_run(uri, experiment, metrics_digest)

    def attach_files(self, uri: str, run_id: str, paths: list[Path], folder: str) -> None:
        self.records.attach_files(uri, run_id, paths, folder)

    def abandon(self) -> None:
        """The stage is gone: close its parent run FAILED (a no-op once it was finished)."""
        if self.recorder is not None:
            self.recorder.finish("FAILED", "the train process ended before finishing")


def _serve(connection: Connection) -> None:
    # Ctrl-C reaches the whole process group: the stage decides, and sends `finish_parent`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # MLflow's per-download progress bars would scribble over the stage's own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException

    # Nor its INFO lines ("Validating input example ...") and its advice on type hints for a
    # model's `predict` (which MLflow would read as a second signature).
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*[Tt]ype hint", category=UserWarning)

    from pipeline.tracking.store import first_line

    def reply(error: type[RecordError] | None, value: Any) -> None:
        # The stage may have stopped listening (it failed): carry on to `finish_parent`.
        with contextlib.suppress(OSError):
            connection.send((error, value))

    session = _Session()
    failed = False
    while True:
        try:
            operation, args, kwargs = connection.recv()
        except EOFError:  # no more records; without `finish_parent` among them, the stage died
            session.abandon()
            return
        if failed and operation is not _Session.finish_parent:
            reply(Refused, "an earlier record failed")
            continue
        try:
            reply(None, operation(session, *args, **kwargs))
        except TrackingUnavailable as error:
            failed = True
            reply(StoreUnavailable, str(error))
        except (MlflowException, OSError) as error:
            failed = True
            reply(StoreLost, first_line(error))
        except Exception:
            failed = True
            reply(RecordBug, traceback.format_exc())


def _serve_and_end(connection: Connection) -> None:
    _serve(connection)
    # The stage waits for this process to end (``Tracker.close``); MLflow's teardown would
    # add half a second to every stage.
    exit_now(0)


class Tracker:
    """The stage's side of the MLflow process: a method per record, each returning at once."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve_and_end, args=(theirs,), name="lrsched-mlflow", daemon=True
        )
        self._process.start()
        theirs.close()
        self._pending: list[Reply[Any]] = []
        self._sent_any = False

    def open_store(self, uri: str, experiment: str, pid: int) -> Reply[tuple[str, ...]]:
        """Open the store for the runs of process ``pid``; the answer: the ids of the runs a
        killed train left RUNNING, now marked FAILED."""
        return self._send(_Session.open_store, uri, experiment, pid)

    def start_parent(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        datasets: Sequence[DataFile] = (),
    ) -> Reply[str]:
        """Open the parent run, with the data it read; the answer: its id."""
        return self._send(_Session.start_parent, name, params, tags, datasets)

    def log_child(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        series: Mapping[str, Iterable[float]],
        final: Mapping[str, float],
        artifacts: Mapping[str, Path],
        datasets: Sequence[DataFile] = (),
        model: ModelToLog | None = None,
    ) -> Reply[str]:
        """Log one finished run whole under the parent, with the data it read and its model;
        the answer: its id."""
        return self._send(
            _Session.log_child, name, params, tags, series, final, artifacts, datasets, model
        )

    def register_model(
        self, run_name: str, model_name: str, tags: Mapping[str, str], score: float
    ) -> Reply[Registration]:
        """Register child run ``run_name``'s model as a new version of ``model_name``, and move
        the ``champion`` alias to it if its score (lower is better) beats the champion's."""
        return self._send(_Session.register_model, run_name, model_name, tags, score)

    def attach_text(self, text: str, name: str) -> Reply[None]:
        """A text file on the parent run."""
        return self._send(_Session.attach_text, text, name)

    def tag_parent(self, key: str, value: str) -> Reply[None]:
        return self._send(_Session.tag_parent, key, value)

    def finish_parent(self, status: RunStatus, reason: str | None = None) -> Reply[None]:
        """Close the parent run; sent even after a failed record."""
        return self._send(_Session.finish_parent, status, reason)

    def find_train_run(self, uri: str, experiment: str, metrics_digest: str) -> Reply[str | None]:
        """The newest train parent run whose metrics file had this digest, if any."""
        return self._send(_Session.find_train_run, uri, experiment, metrics_digest)

    def attach_files(self, uri: str, run_id: str, paths: list[Path], folder: str) -> Reply[None]:
        return self._send(_Session.attach_files, uri, run_id, paths, folder)

    def _send(
        self, operation: Callable[Concatenate[_Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Reply[T]:
        # The operation travels as a reference to the _Session method: pickled by name.
        reply: Reply[T] = Reply(self, operation.__name__)
        try:
            self._connection.send((operation, args, kwargs))
        except OSError:
            raise self._ended(reply.operation) from None
        self._pending.append(reply)
        self._sent_any = True
        return reply

    def poll(self) -> None:
        """Raise now if a record answered so far failed; never waits."""
        while self._pending and self._connection.poll():
            self._receive()

    def wait(self) -> None:
        """Wait for every record sent; raise the ``RecordError`` of the first that failed."""
        while self._pending:
            self._receive()

    def _receive(self) -> None:
        reply = self._pending[0]
        try:
            error, value = self._connection.recv()
        except EOFError:
            raise self._ended(reply.operation) from None
        self._pending.pop(0)
        reply._settle(error, value)

    def _ended(self, operation: str) -> ProcessEnded:
        self._process.join(5)
        message = f"the MLflow process ended ({self._process.exitcode})"
        return ProcessEnded(operation, message)

    def close(self) -> None:
        """Let the process finish what it was sent, then end it."""
        self._connection.close()
        if not self._sent_any:  # e.g. the params were invalid: no need to wait for its imports
            self._process.terminate()
        self._process.join(CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def failed_run_on_error(tracker: Tracker, uri: str) -> Iterator[None]:
    """On any error, close the parent run FAILED; say what a failed record means."""
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(RecordError):  # the process may be gone
            tracker.finish_parent("FAILED")
        if isinstance(error, RecordError):
            raise tracking_error(error, uri) from None
        raise


def tracking_error(error: RecordError, uri: str) -> Exception:
    if isinstance(error, StoreUnavailable):  # the store could not be opened: the message says so
        return TrackingUnavailable(error.message)
    if isinstance(error, RecordBug):
        return RuntimeError(f"recording to MLflow failed in {error.operation}:\n{error.message}")
    return TrackingUnavailable(
        f"lost the MLflow store {uri} mid-run: {error.message}\n"
        "No output was written; the runs of this attempt are marked FAILED now, or by the "
        "next train on this host if the store cannot be reached."
    )
