"""The must-show of issue 7: rotate and rewrap 100,000 patients, SIGKILL the rewrap midway,
resume it, and find every key unwrapping, patients intact, the audit log verifying.

Everything runs through the real command line in child processes (SQLite). The provider is
a parameter: "transit" (100,000 patients, keys in the session's OpenBao dev server, rewrapped
by Transit's batch rewrap) and "file" (10,000 patients, the embedded default).
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labvault.core.config import load_settings
from labvault.core.crypto.blind_index import IndexKind
from labvault.core.crypto.keyring import data_key_context, index_key_context
from labvault.core.crypto.providers import KeyProvider, load_key_provider
from labvault.core.crypto.providers.config import KeyProviderConfig
from labvault.patients.synthetic import synthetic_patient_rows
from openbao import OpenBaoServer

PATIENTS = 100_000  # the figure, with the production provider (Transit)
FILE_PATIENTS = 10_000  # the key file's run: the same path, in a tenth of the time
BATCH_SIZE = 1000
SEED = 7
SAMPLE = (0, 4_321, 9_999)


@dataclass(frozen=True)
class ProviderSetup:
    """The LABVAULT_* variables that select a key provider, on top of the data directory."""

    name: str
    env: dict[str, str]
    patients: int


ProviderFactory = Callable[[Path, pytest.FixtureRequest], ProviderSetup]


def _file_provider(_tmp_path: Path, _request: pytest.FixtureRequest) -> ProviderSetup:
    # `labvault init` creates the key file (data_dir/keys).
    return ProviderSetup("file", {}, FILE_PATIENTS)


def _transit_provider(tmp_path: Path, request: pytest.FixtureRequest) -> ProviderSetup:
    """A fresh Transit key on the session's OpenBao; `labvault init` creates it. The token
    reaches the child processes as production gives it: a 0600 file."""
    openbao: OpenBaoServer = request.getfixturevalue("openbao")
    token_file = tmp_path / "bao-token"
    token_file.touch(mode=0o600)
    token_file.write_text(openbao.root_token, encoding="utf-8")
    key = f"labvault-{uuid.uuid4().hex[:12]}"
    return ProviderSetup(
        "transit",
        {
            "LABVAULT_KEY_PROVIDER": f"transit:{openbao.address}/transit/{key}",
            "LABVAULT_TRANSIT_TOKEN_FILE": str(token_file),
        },
        PATIENTS,
    )


PROVIDERS: dict[str, ProviderFactory] = {"file": _file_provider, "transit": _transit_provider}


@pytest.fixture(
    params=[
        "file",
        pytest.param("transit", marks=pytest.mark.openbao),
    ]
)
def provider_setup(request: pytest.FixtureRequest, tmp_path: Path) -> ProviderSetup:
    return PROVIDERS[str(request.param)](tmp_path, request)


@dataclass
class Deployment:
    env: dict[str, str]
    database: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "labvault.cli", *args]

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
        return " ".join(result.stdout.split())

    def rewrap_batches(self) -> int:
        """Committed rewrap batches, read without disturbing the writer (WAL, read-only)."""
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            (count,) = connection.execute(
                "SELECT count(*) FROM audit_events WHERE action = 'keys:rewrap:batch'"
            ).fetchone()
        finally:
            connection.close()
        return int(count)


@pytest.fixture
def deployment(
    tmp_path: Path, provider_setup: ProviderSetup, monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    """Child processes and this one (to check the result) see the same LABVAULT_* settings."""
    data_dir = tmp_path / "var"
    for name in [name for name in os.environ if name.startswith("LABVAULT_")]:
        monkeypatch.delenv(name)
    for name, value in {"LABVAULT_DATA_DIR": str(data_dir), **provider_setup.env}.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, "COLUMNS": "400"}  # wide tables: a patient's row on one line
    return Deployment(env, data_dir / "db" / "labvault.sqlite3")


def _wrapped_keys(database: Path) -> Iterator[list[tuple[bytes, str]]]:
    """Every wrapped key with its context, in batches, straight from the tables."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        data = connection.execute(
            "SELECT tenant_id, subject_type, subject_id, id, wrapped_key FROM data_keys"
        )
        while rows := data.fetchmany(10_000):
            yield [
                (
                    bytes(blob),
                    data_key_context(
                        uuid.UUID(tenant), subject_type, uuid.UUID(subject), uuid.UUID(key_id)
                    ),
                )
                for tenant, subject_type, subject, key_id, blob in rows
            ]
        index = connection.execute(
            "SELECT tenant_id, kind, generation, wrapped_key FROM index_keys"
        )
        yield [
            (bytes(blob), index_key_context(uuid.UUID(tenant), IndexKind(kind), generation))
            for tenant, kind, generation, blob in index.fetchall()
        ]
    finally:
        connection.close()


def _current_and_total(provider: KeyProvider, database: Path) -> tuple[int, int]:
    current = total = 0
    for batch in _wrapped_keys(database):
        total += len(batch)
        current += sum(provider.is_current(blob) for blob, _ in batch)
    return current, total


def _provider() -> KeyProvider:
    """The key provider as a new process loads it (the test process's LABVAULT_* settings)."""
    return load_key_provider(KeyProviderConfig.from_settings(load_settings()))


def test_rewrap_killed_midway_resumes_and_everything_still_opens(
    deployment: Deployment, provider_setup: ProviderSetup
) -> None:
    patients = provider_setup.patients
    started = time.monotonic()
    deployment.ok("init", "--organization", "Labo SIGKILL")
    assert f"Added {patients} synthetic patients" in deployment.ok(
        "seed", "--patients", str(patients), "--seed", str(SEED)
    )
    seeded = time.monotonic()
    assert "New active root key version" in deployment.ok("keys", "rotate")

    # Start the rewrap and kill it with SIGKILL once 20-80 % of the batches are committed.
    total_batches = patients // BATCH_SIZE
    rewrap = subprocess.Popen(
        deployment.command("keys", "rewrap", "--batch-size", str(BATCH_SIZE)),
        env=deployment.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and rewrap.poll() is None:
            if deployment.rewrap_batches() >= total_batches * 0.35:
                break
            time.sleep(0.02)
        assert rewrap.poll() is None, "the rewrap finished before it could be killed"
        rewrap.send_signal(signal.SIGKILL)
        assert rewrap.wait(timeout=30) == -signal.SIGKILL
    finally:
        if rewrap.poll() is None:
            rewrap.kill()
            rewrap.wait()
    killed_at = deployment.rewrap_batches()
    assert 0.2 * total_batches <= killed_at <= 0.8 * total_batches

    current, total = _current_and_total(_provider(), deployment.database)
    assert 0 < current < total, "some but not all keys were rewrapped before the kill"
    assert current >= (killed_at - 1) * BATCH_SIZE

    resumed = deployment.ok("keys", "rewrap", "--batch-size", str(BATCH_SIZE))
    assert f"{total - current} wrapped keys rewrapped" in resumed
    assert "Every wrapped key is under the active version." in resumed

    # Every data key and index key unwraps, under the active version.
    provider = _provider()
    opened = 0
    for batch in _wrapped_keys(deployment.database):
        assert all(provider.is_current(blob) for blob, _ in batch)
        opened += len(provider.unwrap_many(batch))
    assert opened == total

    rows = list(itertools.islice(synthetic_patient_rows(patients, seed=SEED), max(SAMPLE) + 1))
    for number in SAMPLE:
        row = rows[number]
        found = deployment.ok("patients", "find", "--nir", row["nir"])
        assert "1 patient(s)" in found
        assert row["birth_name"].upper() in found.upper()
        assert row["email"] in found

    assert "The audit log is intact." in deployment.ok("audit", "verify")
    assert "Retired " in deployment.ok("keys", "retire")
    finished = time.monotonic()
    print(
        f"\nseed {seeded - started:.1f} s, rotate+rewrap+kill+resume+checks "
        f"{finished - seeded:.1f} s, total {finished - started:.1f} s"
    )
