"""A whole backfill from files: the plan, the worker processes, dead letters and checkpoint.

This module owns the coordinator: it plans (or, from a checkpoint, resumes) the input
ranges, runs them in this process, spread over worker processes, or as tasks on a Dask
cluster (``_dask_ranges``), and applies, here, what the workers report: counts, the
dead-letter file, the checkpoint (saved at most once a second and at the end, after the
dead letters it covers are on disk), problems as they happen and progress for whoever
shows them. A dead letter is held until its range is settled past it, so that the file
holds exactly the letters of what the checkpoint says is settled, and a resume writes
each once. The job's counts span its runs: the checkpoint carries them. It does not parse
arguments, draw anything or install signal handlers: the CLI does, and asks it to stop
through :meth:`Job.request_stop`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._checkpoint import COUNTS, Checkpoint, RangeProgress
from ._dead_letters import DeadLetters
from ._engine import SendSettings
from ._input import input_identity, is_stream, plan_ranges
from ._processes import run_in_processes
from ._worker import Message, send_ranges

if TYPE_CHECKING:
    from ._dask_ranges import DaskRunner

_CHECKPOINT_EVERY_SECONDS = 1.0
#: On Dask, each file is split into this many ranges for each worker thread, at least...
_DASK_RANGES_PER_THREAD = 4
#: ...and into ranges of at most this many bytes: a task run again after its worker died
#: sends at most this much again.
_DASK_RANGE_BYTES = 64 << 20
#: Distinct causes of failed events kept by name; more are counted together.
_MAX_CAUSES = 20
_OTHER_CAUSES = "other causes"
_PROGRESS_EVERY_SECONDS = 0.1


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
    """What a run did, or (:attr:`Job.whole`) the whole job across its runs."""

    sent: int = 0
    failed: int = 0
    invalid: int = 0
    #: Read so far by this run, for progress only.
    bytes_read: int = 0


#: Told of progress: the whole job's counts so far, with this run's reading (called at
#: most ten times a second).
OnProgress = Callable[[Totals], None]
#: Told of a problem as it happens: ``"waiting"`` (the API cannot be reached: retrying)
#: or ``"error"`` (the run stops); the message; the setting (a keyword of
#: :class:`SendSettings`) that fixes it, if one does.
OnProblem = Callable[[str, str, "str | None"], None]


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    setting: str | None = None


class Job:
    """One run of a backfill; :meth:`run` once (it releases the checkpoint's lock at its end)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        #: What this run did; :attr:`whole` adds what the runs before it did.
        self.totals = Totals()
        self._earlier = Totals()
        #: Failed events by cause, for the whole job.
        self.causes: dict[str, int] = {}
        #: Problems met by this run, in order, each once.
        self.problems: list[Problem] = []
        #: Told of progress, from the thread that runs the job.
        self.on_progress: OnProgress = lambda totals: None
        #: Told of each problem as it happens, from the thread that runs the job.
        self.on_problem: OnProblem = lambda kind, message, setting: None
        self._stop_requested = False
        #: A range stopped by itself for a cause that stops every range (TLS, the key).
        self._stopped_by_error = False
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
        self._checkpoint: Checkpoint | None = None
        self.resumed = False
        if settings.checkpoint_path is None:
            self._ranges = [RangeProgress(input_range, input_range.start) for input_range in plan]
            self._dead_letters = DeadLetters(settings.dead_letter_path, None)
        else:
            self._checkpoint, self.resumed = Checkpoint.load_or_start(
                settings.checkpoint_path,
                settings.inputs,
                plan,
                batch_bytes=settings.send.batch_bytes,
                batch_events=settings.send.batch_events,
            )
            try:
                self._use_checkpoint(self._checkpoint)
            except BaseException:
                self._checkpoint.close()
                raise
        self._last_save = self._last_progress = 0.0
        #: Something the checkpoint does not hold yet has been applied.
        self._unsaved = False

    def _use_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._ranges = checkpoint.ranges
        self._earlier = Totals(**checkpoint.counts)
        self.causes = dict(checkpoint.causes)
        # Batches are cut as they were, so that they keep their Idempotency-Keys.
        self.settings = dataclasses.replace(
            self.settings,
            send=dataclasses.replace(self.settings.send, batch_events=checkpoint.batch_events),
        )
        self._dead_letters = DeadLetters(
            self.settings.dead_letter_path, checkpoint.dead_letters if self.resumed else None
        )
        checkpoint.dead_letters = self._dead_letters.identity

    @property
    def interrupted(self) -> bool:
        return self._stop_requested

    @property
    def whole(self) -> Totals:
        """The whole job's counts: this run's and those of the runs it resumed."""
        return Totals(*(getattr(self._earlier, n) + getattr(self.totals, n) for n in COUNTS))

    @property
    def unfinished(self) -> int:
        """Ranges not yet read to their end and settled: what a resume would send."""
        return sum(not progress.finished for progress in self._ranges)

    def request_stop(self) -> None:
        """Stop reading; let requests under way end; then save the checkpoint. Safe to call
        from a signal handler (it only sets a flag)."""
        self._stop_requested = True

    def _should_stop(self) -> bool:
        return self._stop_requested or self._stopped_by_error

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
                errors = self._dask.run(
                    [
                        (index, dataclasses.replace(part, path=input_identity(part.path)), start)
                        for index, part, start in to_do
                    ],
                    settings=self.settings.send,
                    max_event_bytes=self.settings.max_event_bytes,
                    apply=self._apply,
                    save=lambda: self._save(force=False),
                    should_stop=self._should_stop,
                )
                for error in errors:
                    self._problem(Problem("error", error))
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
                    should_stop=self._should_stop,
                )
            elif not run_in_processes(
                to_do,
                settings=self.settings.send,
                processes=self.settings.processes,
                max_event_bytes=self.settings.max_event_bytes,
                apply=self._apply,
                should_stop=self._should_stop,
            ):
                # A worker that died without saying so (killed): nothing more came from it.
                self._problem(Problem("error", "a worker process ended unexpectedly"))
        finally:
            self._save(force=True)
            self._dead_letters.close()
            if self._checkpoint is not None:
                self._checkpoint.close()
            if self._dask is not None:
                self._dask.close()
        return self.totals

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
            self._release(index, watermark)
            self.totals.sent += sent
            self.totals.failed += failed
            self._save(force=False)
            self._progress()
        elif kind == "read":
            self.totals.bytes_read += message[2]
            self._progress()
        elif kind in ("invalid", "failed"):
            self._dead_letters.hold(index, message[2], message)
        elif kind == "finished":
            self._release(index, message[2])
            self._ranges[index].done = message[2]
            self._ranges[index].finished = True
        elif kind == "waiting":
            self._problem(Problem("waiting", message[2]))
        elif kind == "error":
            self._stopped_by_error = True
            self._problem(Problem("error", message[2], message[3]))

    def _release(self, index: int, settled_to: int) -> None:
        path = self._ranges[index].range.path
        for letter in self._dead_letters.release(index, settled_to, path):
            if letter[0] == "invalid":
                self.totals.invalid += 1
            else:
                _, _, _, events, _, error = letter
                cause = (
                    error
                    if error in self.causes or len(self.causes) < _MAX_CAUSES
                    else (_OTHER_CAUSES)
                )
                self.causes[cause] = self.causes.get(cause, 0) + len(events)

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_EVERY_SECONDS:
            self._last_progress = now
            whole = self.whole
            whole.bytes_read = self.totals.bytes_read
            self.on_progress(whole)

    def _problem(self, problem: Problem) -> None:
        if problem not in self.problems:
            self.problems.append(problem)
            self.on_problem(problem.kind, problem.message, problem.setting)

    # -- checkpoint ------------------------------------------------------------------------

    def _save(self, *, force: bool) -> None:
        checkpoint = self._checkpoint
        if checkpoint is None:
            return
        now = time.monotonic()
        if not force and (not self._unsaved or now - self._last_save < _CHECKPOINT_EVERY_SECONDS):
            return
        self._last_save = now
        self._unsaved = False
        # The checkpoint may only cover dead letters that are on disk.
        checkpoint.dead_letters = self._dead_letters.sync()
        whole = self.whole
        checkpoint.counts = {name: getattr(whole, name) for name in COUNTS}
        checkpoint.causes = dict(self.causes)
        checkpoint.save()


def _connect(settings: JobSettings) -> DaskRunner:
    """The cluster at ``settings.dask_address``, once every worker can read every input."""
    from ._dask_ranges import DaskRunner  # noqa: PLC0415 (the dask extra, only when asked for)

    assert settings.dask_address is not None
    runner = DaskRunner(settings.dask_address)
    try:
        runner.check_workers(
            [input_identity(path) for path in settings.inputs], settings.send.api_key
        )
    except BaseException:
        runner.close()
        raise
    return runner
