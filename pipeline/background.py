"""MLflow in a process of its own, so that its seconds overlap with the stage's own work.

Importing MLflow and opening its store take 3-5 s; importing torch and training take as long
again. A stage starts ``Background`` before it imports torch, sends it the calls of
``pipeline.records`` it needs, goes on with its work, and collects the answers when it must
know them: before it writes an output that says the records are complete.

Calls run one at a time, in the order sent. After one fails, the rest are refused at once
(rather than each waiting out a dead server's retries) except ``finish``, which closes the
parent run FAILED. The process is spawned, not forked: it inherits no torch threads and no
open database connections. If the stage dies, the process sees the pipe close, closes the
parent run FAILED, and ends. (Being spawned, it imports the caller's main module again: a
script that calls a stage's ``run`` needs the usual ``if __name__ == "__main__":`` guard.)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from pipeline.tracking import TrackingUnavailable

# How long closing waits for the process to finish what it was sent (a FAILED close against a
# dead server waits out MLflow's HTTP retries).
CLOSE_TIMEOUT_S = 120


class RecordError(Exception):
    """A call failed in the background process; ``kind`` says how, ``message`` what."""

    def __init__(self, call: str, kind: str, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call, self.kind, self.message = call, kind, message


def _serve(connection: Connection) -> None:
    # Ctrl-C reaches the whole process group: the stage decides, and sends `finish`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.exceptions import MlflowException

    from pipeline import records
    from pipeline.tracking import first_line

    def reply(*answer: Any) -> None:
        # The stage may have stopped listening (it failed): carry on to `finish` regardless.
        with contextlib.suppress(OSError):
            connection.send(answer)

    recorder: records.Recorder | None = None
    failed = False
    while True:
        try:
            target, name, args = connection.recv()
        except EOFError:  # no more calls; without `finish` among them, the stage died
            if recorder is not None:
                recorder.finish("FAILED", "the train process ended before finishing")
            # Every call was synchronous and is committed: skip MLflow's teardown (about 0.7 s,
            # which the stage would wait for).
            sys.stderr.flush()
            os._exit(0)
        if failed and name != "finish":
            reply("error", "skipped", "an earlier call failed")
            continue
        if target == "recorder" and recorder is None:
            reply("error", "unavailable", "no recorder: the store was never opened")
            continue
        try:
            owner = records if target == "records" else recorder
            result: Any = getattr(owner, name)(*args)
            if isinstance(result, records.Recorder):
                recorder, result = result, list(result.reaped)
            reply("ok", "", result)
        except TrackingUnavailable as error:
            failed = True
            reply("error", "unavailable", str(error))
        except (MlflowException, OSError) as error:
            failed = True
            reply("error", "store", first_line(error))
        except Exception:
            failed = True
            reply("error", "bug", traceback.format_exc())


class Background:
    """The process and its pipe: ``call`` and ``record`` return at once; ``wait`` collects."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(theirs,), name="lrsched-mlflow", daemon=True
        )
        self._process.start()
        theirs.close()
        self._pending: list[str] = []
        self.sent: set[str] = set()  # the names of the calls sent so far
        self.answers: dict[str, Any] = {}  # the latest answer of each call, by name

    def call(self, name: str, *args: Any) -> None:
        """Call ``pipeline.records.<name>``; a ``Recorder`` it returns becomes the recorder."""
        self._send("records", name, args)

    def record(self, name: str, *args: Any) -> None:
        """Call a method of the recorder that an earlier ``call`` opened."""
        self._send("recorder", name, args)

    def _send(self, target: str, name: str, args: tuple) -> None:
        try:
            self._connection.send((target, name, args))
        except OSError:
            raise self._died(name) from None
        self._pending.append(name)
        self.sent.add(name)

    def poll(self) -> None:
        """Raise now if a call answered so far failed; never waits."""
        while self._pending and self._connection.poll():
            self._receive()

    def wait(self) -> None:
        """Wait for every call sent; raise ``RecordError`` for the first that failed."""
        while self._pending:
            self._receive()

    def _receive(self) -> None:
        try:
            status, kind, value = self._connection.recv()
        except EOFError:
            raise self._died(self._pending[0]) from None
        name = self._pending.pop(0)
        if status == "error":
            raise RecordError(name, kind, value)
        self.answers[name] = value

    def _died(self, call: str) -> RecordError:
        self._process.join(5)
        return RecordError(call, "died", f"the MLflow process ended ({self._process.exitcode})")

    def close(self) -> None:
        """Let the process finish what it was sent, then end it."""
        self._connection.close()
        if not self.sent:  # e.g. the params were invalid: no need to wait for its imports
            self._process.terminate()
        self._process.join(CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
