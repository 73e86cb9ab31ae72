"""The web app's background checkpointer: sequences events and signs checkpoints on time.

Each app process runs one; several processes take turns on the sequencer's lock. A failure
is logged (ids only) and retried on the next tick: events stay recorded, only their
sealing waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from labvault.core.audit.sequencer import AuditLog
from labvault.core.logging import get_logger

_log = get_logger("labvault.audit")


class AuditCheckpointer:
    def __init__(self, audit_log: Callable[[], AuditLog], interval_seconds: float) -> None:
        """``audit_log`` is called on each tick: an app whose key provider is not usable yet
        still starts (its health endpoint says why) and seals events once it is."""
        self._audit_log = audit_log
        self._interval = max(0.05, min(interval_seconds / 2, 1.0))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="labvault-audit-checkpointer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then seal what is left so that a clean shutdown loses no time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.tick(force=True)

    def tick(self, *, force: bool = False) -> None:
        try:
            report = self._audit_log().advance(force_checkpoint=force)
        except Exception as exc:
            _log.error("audit.checkpoint.failed", error=type(exc).__name__)
            return
        for checkpoint in report.checkpoints:
            _log.info("audit.checkpoint.signed", tree_size=checkpoint.tree_size)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.tick()
