"""``segops-fast send --dask ADDRESS``: the input's byte ranges run as tasks on a Dask cluster.

This module owns the Dask side of a backfill from files: connecting to the scheduler;
checking, before anything is sent, that every worker can read every input and sees the
same file (its size); running each range as a task that calls :func:`send_ranges` in the
worker and returns what it reported; telling running tasks to stop (Ctrl-C), and letting
them notice that the coordinator is gone (its heartbeat stops); and handing each finished
task's reports to the coordinator. A task's reports are applied only once it has
finished, so a task that Dask runs again after its worker died counts, and writes its
dead letters, once. The coordinator (:class:`~segops_fast.backfill._job.Job`) keeps the
checkpoint and the dead-letter file on its own machine, as without Dask.

The API key never travels in the task graph (any client of the scheduler can read a
graph, and over ``tcp://`` it crosses the network in clear): each worker reads it from its
own environment (``SEGOPS_API_KEY`` or ``SEGOPS_API_KEY_FILE``), and the coordinator
checks, before anything is sent, that every worker holds the same key as it does, by
comparing an HMAC of the key under a fresh random nonce (neither the key nor a reusable
digest of it leaves a machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import stat
import time
import uuid
from collections.abc import Callable

from distributed import Client, Variable, as_completed, get_worker

from ._api_key import api_key_from_environment
from ._engine import SendSettings
from ._input import InputRange
from ._worker import Message, Report, send_ranges

#: Seconds to connect to the scheduler, and to wait for a worker when there is none.
CONNECT_TIMEOUT = 30.0
#: How often the coordinator beats, and a task looks at the beat (one scheduler call).
_HEARTBEAT_SECONDS = 1.0
#: A task whose coordinator has not beaten for this long stops: it was killed.
_COORDINATOR_GONE_SECONDS = 10.0
_STOP = "stop"


class DaskRunner:
    """A connection to the cluster at ``address``, for one backfill; :meth:`close` it."""

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            self._client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ValueError(f"cannot reach the Dask scheduler at {address}: {error}") from None
        try:
            self._client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            self.close()
            raise ValueError(
                f"the Dask cluster at {address} has no worker (waited {CONNECT_TIMEOUT:.0f} s)"
            ) from None

    @property
    def threads(self) -> int:
        """Tasks the cluster runs at once: its workers' threads."""
        threads: int = sum(self._client.nthreads().values())
        return max(1, threads)

    def check_workers(self, paths: list[str], api_key: str) -> None:
        """Raise ``ValueError`` naming the worker when a worker cannot read an input, sees
        a file of another size there (not the same file), or holds no key or another key
        than ``api_key``."""
        nonce = secrets.token_bytes(16)
        try:
            seen: dict[str, tuple[str | None, list[int | str]]] = self._client.run(
                look_at_worker, paths, nonce
            )
        except Exception as error:  # the worker's own exception, e.g. no segops_fast there
            raise ValueError(
                f"the Dask workers at {self.address} cannot run segops-fast ({error}): "
                "install segops-fast[dask] on every worker"
            ) from None
        for worker, (proof, sizes) in sorted(seen.items()):
            if proof is None or not hmac.compare_digest(proof, key_proof(api_key, nonce)):
                raise ValueError(
                    f"worker {worker} has {'no API key' if proof is None else 'another API key'}"
                    ": with --dask, each worker reads the key from its own environment (set "
                    "SEGOPS_API_KEY, or SEGOPS_API_KEY_FILE to a file that holds it, where the "
                    "worker starts), so that it never travels in the task graph"
                )
            for path, size in zip(paths, sizes):
                if isinstance(size, str):
                    raise ValueError(
                        f"worker {worker} cannot read {path}: {size}; --dask needs the input "
                        "on a filesystem that every worker shares, at the same path"
                    )
                if size != os.path.getsize(path):
                    raise ValueError(
                        f"worker {worker} sees {path} with {size} bytes, not "
                        f"{os.path.getsize(path)}: --dask needs the same file on every worker"
                    )

    def run(
        self,
        to_do: list[tuple[int, InputRange, int]],
        *,
        settings: SendSettings,
        max_event_bytes: int,
        apply: Report,
        save: Callable[[], None],
        should_stop: Callable[[], bool],
    ) -> list[str]:
        """Run each ``(index, range, start)`` as a task; ``apply`` each finished task's
        reports; call ``save`` at least every 0.1 s (reports come in bursts, as tasks end:
        the coordinator saves its checkpoint then, if it is due); return the errors of tasks
        that failed (their ranges are left for a resume)."""
        share = min(self.threads, len(to_do))
        if settings.rate is not None:
            # At most ``share`` tasks run at once: each has its part of the rate in all.
            settings = dataclasses.replace(settings, rate=settings.rate / max(1, share))
        # Each worker reads the key from its own environment (see the module's docstring).
        settings = dataclasses.replace(settings, api_key="")
        run = f"segops-fast-send-{uuid.uuid4().hex}"
        heartbeat = Variable(run, client=self._client)
        beats = 0
        heartbeat.set(beats)
        futures = {
            self._client.submit(
                run_range,
                index,
                input_range,
                start,
                settings=settings,
                max_event_bytes=max_event_bytes,
                run=run,
                key=f"{run}-{index}",
            ): f"{input_range.path} from byte {start}"
            for index, input_range, start in to_do
        }
        completed = as_completed(list(futures), loop=self._client.loop)
        errors: list[str] = []
        stopping = False
        # Once stopping, tasks under way end within a request's timeout; a task that does
        # not (no worker left to run it) is given up, its range left for a resume.
        stopped_by = float("inf")
        beaten_at = time.monotonic()
        try:
            while not completed.is_empty():
                if time.monotonic() > stopped_by:
                    errors.append(f"{completed.count()} tasks did not stop in time")
                    self._client.cancel([future for future in futures if not future.done()])
                    break
                if not stopping and should_stop():
                    stopping = True
                    stopped_by = time.monotonic() + settings.timeout + _COORDINATOR_GONE_SECONDS
                    heartbeat.set(_STOP)
                elif not stopping and time.monotonic() - beaten_at >= _HEARTBEAT_SECONDS:
                    beats += 1
                    beaten_at = time.monotonic()
                    heartbeat.set(beats)
                ready = completed.next_batch(block=False) if completed.has_ready() else []
                if not ready:
                    time.sleep(0.05)
                for future in ready:
                    if future.status == "finished":
                        messages = future.result()
                        for message in messages:
                            apply(message)
                        ended = {kind for kind, *_ in messages} & {"finished", "error"}
                        if not stopping and not ended:
                            # It stopped by itself: it lost the heartbeat (a coordinator
                            # blocked for long). What it settled is kept; the rest resumes.
                            # (One that reported an error has said why it stopped.)
                            where = futures[future]
                            errors.append(f"the task for {where} stopped before its end: resume")
                    elif future.status == "error":
                        error = future.exception()
                        errors.append(f"{type(error).__name__}: {error}")
                    else:  # cancelled: the scheduler lost it
                        errors.append(f"task {future.key} was {future.status}")
                    future.release()
                save()
        finally:
            heartbeat.delete()
        return errors

    def close(self) -> None:
        self._client.close()


def key_proof(api_key: str, nonce: bytes) -> str:
    """Shows that one holds ``api_key`` without showing it: its HMAC under ``nonce``."""
    return hmac.new(nonce, api_key.encode(), hashlib.sha256).hexdigest()


def look_at_worker(paths: list[str], nonce: bytes) -> tuple[str | None, list[int | str]]:
    """Run on each worker: the proof of its API key (None without a usable one), and each
    path's size or what stops this worker reading it."""
    try:
        proof: str | None = key_proof(api_key_from_environment(), nonce)
    except ValueError:
        proof = None
    seen: list[int | str] = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
        except OSError as error:
            seen.append(error.strerror or str(error))
            continue
        seen.append(status.st_size if stat.S_ISREG(status.st_mode) else "not a regular file")
    return proof, seen


def run_range(
    index: int,
    input_range: InputRange,
    start: int,
    *,
    settings: SendSettings,
    max_event_bytes: int,
    run: str,
) -> list[Message]:
    """A task: send one range from ``start``; return what was reported, in order."""
    messages: list[Message] = []
    settings = dataclasses.replace(settings, api_key=api_key_from_environment())
    coordinator = _Coordinator(run)
    try:
        send_ranges(
            [(index, input_range, start)],
            settings=settings,
            max_event_bytes=max_event_bytes,
            report=messages.append,
            should_stop=coordinator.should_stop,
        )
    except OSError as error:
        raise OSError(f"worker {get_worker().address}: {error}") from error
    return messages


class _Coordinator:
    """What a task knows of its coordinator: asked to stop, or gone. Looked at (one call to
    the scheduler) at most once per heartbeat, whatever asks how often."""

    def __init__(self, run: str) -> None:
        self._signal = Variable(run)
        self._stopped = False
        self._looked_at = 0.0
        self._beat: object = None
        self._beat_seen_at = time.monotonic()

    def should_stop(self) -> bool:
        now = time.monotonic()
        if self._stopped or now - self._looked_at < _HEARTBEAT_SECONDS:
            return self._stopped
        self._looked_at = now
        try:
            beat = self._signal.get(timeout=_HEARTBEAT_SECONDS)
        except Exception:  # gone with the coordinator, or the scheduler is unreachable
            beat = self._beat
        if beat == _STOP:
            self._stopped = True
        elif beat != self._beat:
            self._beat, self._beat_seen_at = beat, now
        elif now - self._beat_seen_at > _COORDINATOR_GONE_SECONDS:
            self._stopped = True
        return self._stopped
