"""Stop a ``polars-embed run`` when asked: SIGINT (Ctrl-C), SIGTERM (a scheduler) or SIGHUP
(the terminal closed).

The first signal stops taking new work at once (queued requests and local batches are
dropped) and waits only for the requests in flight, whose answers are paid: they are cached,
and the run's ledger record says ``interrupted``. A second signal abandons them and exits at
once: their answers are paid but lost, which is said. Exit code 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

from .common import log

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; handled as Ctrl-C is, with the signal's exit code."""


class Stopper:
    """While open (in the main thread), the signals above stop the embedder's run."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> Stopper:  # noqa: PYI034 - the stopper itself
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def in_flight(self) -> int:
        runner = getattr(self.embedder, "runner", None)
        return getattr(getattr(runner, "concurrency", None), "in_flight", 0)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        run = self.embedder.current_run()
        if self.signum is None:
            self.signum = signum
            if run is not None:
                run.stop()  # nothing more is sent, from any thread
            again = "Ctrl-C again" if signum == signal.SIGINT else f"{name} again"
            log.warning(f"stopping ({name}): waiting for {self.in_flight():,} requests in flight "
                        f"({again} to abandon them)")
            raise Interrupted(name)
        n = self.in_flight()
        if run is not None:  # the ledger says so; best effort, in a thread: this one may hold a lock
            saving = threading.Thread(target=_record_interrupted, args=(run,), daemon=True)
            saving.start()
            saving.join(1.0)
        log.warning(f"abandoned {n:,} requests in flight: their answers are paid but lost; "
                    f"everything finished before is cached, rerun to resume")
        sys.stderr.flush()
        os._exit(128 + signum)


def _record_interrupted(run: Any) -> None:
    with contextlib.suppress(Exception):  # exiting anyway: the ledger is best effort
        run.status = "interrupted"
        run.save()
