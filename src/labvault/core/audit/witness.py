"""Witnesses: copies of the checkpoints kept outside the database.

A witness accepts a new checkpoint only if it is signed by a trusted key and consistent
with the last one it holds (an RFC 6962 consistency proof), so a log that was rewritten,
forked or cut short after a checkpoint was witnessed cannot be passed off as genuine.
The default witness is an append-only file in a directory apart from the database; in
production, point it at storage the database's administrators cannot write (another host,
WORM storage), or add a remote witness behind the same protocol.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from labvault.core.audit.checkpoints import Checkpoint, CheckpointError, TrustedKeys, dumps
from labvault.core.audit.merkle import ProofError, verify_consistency

WITNESS_FILE = "checkpoints.jsonl"
TAIL_BLOCK = 16_384


class WitnessError(Exception):
    """The witness refused a checkpoint, or its own record is unreadable."""


class AuditWitness(Protocol):
    def latest(self) -> Checkpoint | None: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def append(self, checkpoint: Checkpoint, consistency_proof: Sequence[bytes]) -> None:
        """Record ``checkpoint`` if it extends the latest one; raise WitnessError otherwise."""


def check_extension(
    trusted: TrustedKeys,
    latest: Checkpoint | None,
    checkpoint: Checkpoint,
    consistency_proof: Sequence[bytes],
) -> None:
    """Why a witness would refuse ``checkpoint`` after ``latest``; returns if it would not."""
    try:
        trusted.verify(checkpoint)
    except CheckpointError as exc:
        raise WitnessError(f"refused: {exc}") from None
    if latest is None or latest.tree_size == 0:
        return
    if checkpoint.tree_size < latest.tree_size:
        raise WitnessError(
            f"refused: checkpoint at size {checkpoint.tree_size} is older than the witnessed "
            f"size {latest.tree_size} (a truncated or rolled-back log)"
        )
    try:
        verify_consistency(
            latest.tree_size,
            checkpoint.tree_size,
            latest.root_hash,
            checkpoint.root_hash,
            consistency_proof,
        )
    except ProofError as exc:
        raise WitnessError(
            f"refused: checkpoint at size {checkpoint.tree_size} is not consistent with the "
            f"witnessed checkpoint at size {latest.tree_size}: {exc}"
        ) from None


class FileAuditWitness:
    """An append-only JSON-lines file of checkpoints, fsynced on every append."""

    def __init__(self, directory: Path, trusted: TrustedKeys) -> None:
        self.directory = directory
        self.path = directory / WITNESS_FILE
        self._trusted = trusted

    def __repr__(self) -> str:
        return f"FileAuditWitness({self.path})"

    def checkpoints(self) -> list[Checkpoint]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        found = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found.append(Checkpoint.from_json(json.loads(line)))
            except (ValueError, CheckpointError) as exc:
                raise WitnessError(
                    f"{self.path}, line {number}: unreadable checkpoint: {exc}"
                ) from None
        return found

    def latest(self) -> Checkpoint | None:
        recent = self.recent(sys.maxsize)
        return recent[-1] if recent else None

    def recent(self, min_size: int) -> list[Checkpoint]:
        """The checkpoints of at least ``min_size`` events, or else the latest one.

        Reads the file from its end, so that the app's once-a-second look at the witness
        costs the same after years of checkpoints as on the first day.
        """
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return []
        with handle:
            end = handle.seek(0, os.SEEK_END)
            block = TAIL_BLOCK
            while True:
                start = max(0, end - block)
                handle.seek(start)
                lines = handle.read(end - start).split(b"\n")
                if start > 0:
                    lines = lines[1:]  # the first line may be cut
                found = [self._parse(line) for line in lines if line.strip()]
                if start == 0 or (found and found[0].tree_size < min_size):
                    return [c for c in found if c.tree_size >= min_size] or found[-1:]
                block *= 4

    def _parse(self, line: bytes) -> Checkpoint:
        try:
            return Checkpoint.from_json(json.loads(line))
        except (ValueError, CheckpointError) as exc:
            raise WitnessError(f"{self.path}: unreadable checkpoint: {exc}") from None

    def append(self, checkpoint: Checkpoint, consistency_proof: Sequence[bytes]) -> None:
        """Check and append under an exclusive lock on the file: several app processes may
        bring the witness up to date at once, and each must see what the others wrote."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = self.recent(checkpoint.tree_size)
            if checkpoint in held:
                return
            check_extension(
                self._trusted, held[-1] if held else None, checkpoint, consistency_proof
            )
            os.write(fd, (dumps(checkpoint.to_json()) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
