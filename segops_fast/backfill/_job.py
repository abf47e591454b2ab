"""A whole backfill from files: the plan, the worker processes, dead letters and checkpoint.

This module owns the coordinator: it plans (or, from a checkpoint, resumes) the input
ranges, runs them in this process, spread over worker processes, or as tasks on a Dask
cluster (``_dask_ranges``), and applies, here, what the workers report: totals, the
dead-letter file, the checkpoint (saved at most once a second and at the end, after the
dead letters it covers are on disk), and progress for whoever shows it. It does not
parse arguments, draw anything or install signal handlers: the CLI does, and asks it to
stop through :meth:`Job.request_stop`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from ._checkpoint import Checkpoint, RangeProgress
from ._engine import SendSettings
from ._input import InputRange, input_identity, is_stream, plan_ranges
from ._worker import Message, run_in_worker_process, send_ranges

if TYPE_CHECKING:
    from ._dask_ranges import DaskRunner

_CHECKPOINT_EVERY_SECONDS = 1.0
#: On Dask, each file is split into this many ranges for each worker thread, at least...
_DASK_RANGES_PER_THREAD = 4
#: ...and into ranges of at most this many bytes: a task run again after its worker died
#: sends at most this much again.
_DASK_RANGE_BYTES = 64 << 20


@dataclass(frozen=True)
class JobSettings:
    inputs: list[str]
    #: How each process sends; ``rate`` is for all processes together.
    send: SendSettings
    processes: int
    max_event_bytes: int
    checkpoint_path: str | None
    dead_letter_path: str | None
    #: The scheduler of a Dask cluster to run the ranges on, instead of ``processes``.
    dask_address: str | None = None


@dataclass
class Totals:
    """What this run did (a resumed run does not count what the runs before it did)."""

    sent: int = 0
    failed: int = 0
    invalid: int = 0
    bytes_read: int = 0


#: Told of progress: the totals so far (called at most a few times a second).
OnProgress = Callable[[Totals], None]


class Job:
    """One run of a backfill; :meth:`run` once."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self.totals = Totals()
        self.errors: list[str] = []
        #: Told of progress, from the thread that runs the job.
        self.on_progress: OnProgress = lambda totals: None
        self._stop_requested = False
        self._lock = threading.Lock()
        self._dask = None if settings.dask_address is None else _connect(settings)
        try:
            self._start()
        except BaseException:
            if self._dask is not None:
                self._dask.close()
            raise

    def _start(self) -> None:
        settings = self.settings
        if self._dask is None:
            plan = plan_ranges(settings.inputs, settings.processes)
        else:
            plan = plan_ranges(
                settings.inputs,
                _DASK_RANGES_PER_THREAD * self._dask.threads,
                max_range_bytes=_DASK_RANGE_BYTES,
            )
        if settings.checkpoint_path is None:
            self._checkpoint: Checkpoint | None = None
            self._ranges = [RangeProgress(input_range, input_range.start) for input_range in plan]
            self.resumed = False
        else:
            self._checkpoint, self.resumed = Checkpoint.load_or_start(
                settings.checkpoint_path, settings.inputs, settings.send.batch_bytes, plan
            )
            self._ranges = self._checkpoint.ranges
        self._dead_letters = self._open_dead_letters()
        self._last_save = 0.0
        #: Something the checkpoint does not hold yet has been applied.
        self._unsaved = False

    @property
    def interrupted(self) -> bool:
        return self._stop_requested

    def request_stop(self) -> None:
        """Stop reading; let requests under way end; then save the checkpoint. Safe to call
        from a signal handler (it only sets a flag)."""
        self._stop_requested = True

    def run(self) -> Totals:
        """Send every range not yet finished; return this run's totals."""
        to_do = [
            (index, progress.range, progress.done)
            for index, progress in enumerate(self._ranges)
            if not progress.finished
        ]
        try:
            if self._dask is not None:
                # The workers are told each input's real path: their directory is not ours.
                self.errors += self._dask.run(
                    [
                        (index, dataclasses.replace(part, path=input_identity(part.path)), start)
                        for index, part, start in to_do
                    ],
                    settings=self.settings.send,
                    max_event_bytes=self.settings.max_event_bytes,
                    apply=self._apply,
                    save=lambda: self._save(force=False),
                    should_stop=lambda: self._stop_requested,
                )
            elif (
                self.settings.processes == 1
                or len(to_do) <= 1
                # A stream can be read only here (and once): everything is, in turn.
                or any(is_stream(input_range.path) for _, input_range, _ in to_do)
            ):
                send_ranges(
                    to_do,
                    settings=self.settings.send,
                    max_event_bytes=self.settings.max_event_bytes,
                    report=self._apply_locked,
                    should_stop=lambda: self._stop_requested,
                )
            else:
                self._run_workers(to_do)
        finally:
            self._save(force=True)
            if self._dead_letters is not None:
                self._dead_letters.close()
            if self._dask is not None:
                self._dask.close()
        return self.totals

    # -- worker processes ----------------------------------------------------------------------

    def _run_workers(self, to_do: list[tuple[int, InputRange, int]]) -> None:
        context = multiprocessing.get_context("spawn")
        messages: Any = context.Queue()
        stop = context.Event()
        share = max(1, min(self.settings.processes, len(to_do)))
        per_process_rate = (
            None if self.settings.send.rate is None else (self.settings.send.rate / share)
        )
        send = dataclasses.replace(self.settings.send, rate=per_process_rate)
        workers = [
            context.Process(
                target=run_in_worker_process,
                args=(to_do[n::share],),
                kwargs={
                    "settings": send,
                    "max_event_bytes": self.settings.max_event_bytes,
                    "messages": messages,
                    "stop": stop,
                    "parent_pid": os.getpid(),
                },
                name=f"segops-fast-send-{n}",
            )
            for n in range(share)
        ]
        for worker in workers:
            worker.start()
        running = len(workers)
        while running:
            if self._stop_requested and not stop.is_set():
                stop.set()
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                if not any(worker.is_alive() for worker in workers):
                    # A worker that died without saying so (killed): nothing more will come.
                    self.errors.append("a worker process ended unexpectedly")
                    break
                continue
            if message[0] == "exit":
                running -= 1
            else:
                self._apply(message)
        for worker in workers:
            worker.join()

    # -- applying what workers report ------------------------------------------------------

    def _apply_locked(self, message: Message) -> None:
        # In this process, sender threads report too.
        with self._lock:
            self._apply(message)

    def _apply(self, message: Message) -> None:
        kind, index = message[0], message[1]
        self._unsaved = self._unsaved or kind != "read"
        if kind == "settled":
            _, _, watermark, sent, failed = message
            self._ranges[index].done = watermark
            self.totals.sent += sent
            self.totals.failed += failed
            self._save(force=False)
        elif kind == "read":
            self.totals.bytes_read += message[2]
            self.on_progress(self.totals)
        elif kind == "invalid":
            _, _, line_number, line, reason = message
            self.totals.invalid += 1
            self._write_invalid(self._ranges[index].range.path, line_number, line, reason)
        elif kind == "failed":
            _, _, events, reason, error = message
            self._write_failed(self._ranges[index].range.path, events, reason, error)
        elif kind == "finished":
            self._ranges[index].done = message[2]
            self._ranges[index].finished = True
        elif kind == "error":
            self.errors.append(message[2])

    # -- dead letters and checkpoint ---------------------------------------------------------

    def _open_dead_letters(self) -> IO[bytes] | None:
        path = self.settings.dead_letter_path
        if path is None:
            return None
        file = open(path, "ab")  # noqa: SIM115 (closed at the end of run())
        if self._checkpoint is not None:
            if self.resumed:
                # Dead letters written after the checkpoint will be written again by the
                # resumed run: cut them off, so that each is written once.
                file.truncate(min(self._checkpoint.dead_letter_bytes, file.tell()))
            else:
                self._checkpoint.dead_letter_bytes = file.tell()
        return file

    def _write_invalid(self, path: str, line_number: int, line: bytes, reason: str) -> None:
        if self._dead_letters is None:
            return
        where = {"file": path, "line": line_number, "reason": reason}
        try:
            original = orjson.loads(line)
        except orjson.JSONDecodeError:
            original = None
        if isinstance(original, dict):
            letter = {**original, "dead_letter": where}
        else:
            letter = {"raw": line.decode("utf-8", "replace"), "dead_letter": where}
        self._dead_letters.write(orjson.dumps(letter) + b"\n")

    def _write_failed(self, path: str, events: list[bytes], reason: str, error: str) -> None:
        if self._dead_letters is None:
            return
        where = orjson.dumps({"file": path, "reason": reason, "error": error})
        # Each event's JSON object, with the dead_letter field added before its last brace.
        self._dead_letters.writelines(
            event[:-1] + b',"dead_letter":' + where + b"}\n" for event in events
        )

    def _save(self, *, force: bool) -> None:
        checkpoint = self._checkpoint
        if checkpoint is None:
            return
        now = time.monotonic()
        if not force and (not self._unsaved or now - self._last_save < _CHECKPOINT_EVERY_SECONDS):
            return
        self._last_save = now
        self._unsaved = False
        if self._dead_letters is not None:
            # The checkpoint may only cover dead letters that are on disk.
            self._dead_letters.flush()
            os.fsync(self._dead_letters.fileno())
            checkpoint.dead_letter_bytes = self._dead_letters.tell()
        checkpoint.save()


def _connect(settings: JobSettings) -> DaskRunner:
    """The cluster at ``settings.dask_address``, once every worker can read every input."""
    from ._dask_ranges import DaskRunner  # noqa: PLC0415 (the dask extra, only when asked for)

    assert settings.dask_address is not None
    runner = DaskRunner(settings.dask_address)
    try:
        runner.check_inputs([input_identity(path) for path in settings.inputs])
    except BaseException:
        runner.close()
        raise
    return runner
