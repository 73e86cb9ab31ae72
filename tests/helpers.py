"""Test helpers shared across the suite (not fixtures)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import make_url

from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.patients.importer import COLUMNS

PG_ADMIN_URL = os.environ.get(
    "LABVAULT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
APP_ROLE = "labvault_test_app"
"""The application's role in PostgreSQL tests: LOGIN, not superuser, not BYPASSRLS, not the
owner. Runtimes connect as it (so the whole suite runs under row-level security) and
migrate as the server's admin user (the owner of the test databases)."""


def app_url(url: str) -> str:
    """The same PostgreSQL database, reached as the application role (SQLite: unchanged)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(username=APP_ROLE, password=None).render_as_string(hide_password=False)


def owner_url(url: str) -> str:
    """The same PostgreSQL database, reached as its owner (SQLite: unchanged)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    admin = make_url(PG_ADMIN_URL)
    return parsed.set(username=admin.username, password=admin.password).render_as_string(
        hide_password=False
    )


# Short digit or lowercase-hex strings occur by chance in ids stored as hex text (SQLite
# keeps UUIDs as 32 hex characters): "2a422", a birth place in lowercase, is one of them.
_LOOKS_RANDOM = re.compile(r"[0-9a-f]{1,8}")
_BYTEA_HEX = re.compile(rb"\\\\?x([0-9a-f]{2,})")


def write_csv(path: Path, rows: Iterable[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), delimiter=delimiter)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def sensitive_values(rows: Iterable[dict[str, str]]) -> set[str]:
    """Every personal value of the rows, in the spellings a leak could take.

    Values too short to be told apart from random ciphertext bytes are left out.
    """
    found: set[str] = set()
    for row in rows:
        candidates = [row[column] for column in COLUMNS if column != "sex"]
        candidates += row["first_names"].split()
        nir = row["nir"].replace(" ", "")
        if nir:
            candidates += [
                nir,
                " ".join([nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]]),
            ]
        phone = row["phone"].replace(" ", "")
        if phone:
            candidates += [phone, "+33" + phone[1:]]
        for value in candidates:
            value = value.strip()
            for spelling in (value, value.upper(), value.lower()):
                if len(spelling.encode()) >= 5 and not _LOOKS_RANDOM.fullmatch(spelling):
                    found.add(spelling)
    return found


# SQLite stores UUIDs as 32 hex digits, next to whatever field follows in the record: an id
# ending in "fab" before the purpose "registration" spells "fabre", a name in the data set.
# Such ids are blanked before scanning; a run of hex digits of any other length is kept, so a
# NIR (digits) written next to an id still shows.
_STORED_UUID = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
# Timestamps too: "04:37:15.551234" holds the lab value "15.55" (a flaky failure once).
_STORED_TIME = re.compile(rb"\d{2}:\d{2}:\d{2}\.\d{1,6}")


def leaked(blob: bytes, values: Iterable[str]) -> list[str]:
    scanned = _STORED_TIME.sub(b"\0", _STORED_UUID.sub(b"\0", blob))
    return sorted(value for value in values if value.encode() in scanned)


def sqlite_files(database_url: str) -> list[Path]:
    database = Path(make_url(database_url).database or "")
    return [p for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm")) if p.exists()]


def pg_dump(database_url: str) -> bytes:
    """The plain-SQL dump of a database, plus every bytea value in it decoded from hex.

    Taken as the owner, as a backup would be (as the application role, pg_dump refuses
    tables under row-level security rather than dump part of them).
    """
    url = (
        make_url(owner_url(database_url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", url], check=True, capture_output=True
    ).stdout
    # bytea values are dumped as hex: scan them decoded, and the rest of the text without
    # them (hex text would otherwise "contain" short values like 2a099 by chance).
    decoded = [
        bytes.fromhex(m.group(1)[: len(m.group(1)) // 2 * 2].decode())
        for m in _BYTEA_HEX.finditer(dump)
    ]
    text = _BYTEA_HEX.sub(b"<bytea>", dump)
    return text + b"\n" + b"\n".join(decoded)


class AllowEverything:
    """A ``RateLimiter`` that never refuses, so generated input reaches the code behind it."""

    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        pass

    def close(self) -> None:
        pass


class MemoizedHasher(PasswordHasher):
    """The cheapest Argon2id parameters OWASP lists, and each password hashed once per test
    process: tests provision hundreds of accounts with the same few passwords. Verifying
    still runs Argon2 every time."""

    __slots__ = ("_hashes",)

    def __init__(self) -> None:
        super().__init__(Argon2Parameters(time_cost=5, memory_cost=7168))
        self._hashes: dict[str, str] = {}

    def hash(self, password: Secret[str]) -> str:
        value = password.reveal()
        if value not in self._hashes:
            self._hashes[value] = super().hash(password)
        return self._hashes[value]


CHEAP_HASHER = MemoizedHasher()
