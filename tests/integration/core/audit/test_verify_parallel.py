"""Verification split over worker processes finds exactly what one process finds."""

from __future__ import annotations

from pathlib import Path

import pytest
from logbuilder import Attacker, build, make_settings

from labvault.core.audit import verify as verify_module
from labvault.core.audit.verify import ParallelScan, Tampering, VerifyReport, verify_log
from labvault.core.runtime import Runtime
from labvault.core.tenancy import AUDIT_LOG_SCOPE


def _verify(runtime: Runtime, workers: int) -> VerifyReport:
    audit_log = runtime.audit_log
    parallel = ParallelScan(
        database_url=runtime.settings.sqlalchemy_url,
        key_provider=runtime.key_provider_config,
        workers=workers,
        scope=AUDIT_LOG_SCOPE,
    )
    with runtime.audit_sessions() as session:
        return verify_log(
            session, audit_log.trusted_keys, audit_log.seal_keys(), audit_log.witness,
            parallel=parallel,
        )  # fmt: skip


def test_workers_report_the_same_first_inconsistency(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "RANGE_SIZE", 64)
    monkeypatch.setattr(verify_module, "PARALLEL_FROM_EVENTS", 1)
    runtime = Runtime(make_settings(tmp_path / "var", database_url))
    try:
        build(runtime, 700)
        intact = _verify(runtime, workers=2)
        assert intact.ok, intact.findings
        assert intact.events == 700

        attacker = Attacker(runtime)
        attacker.set_event(650, purpose="other")
        attacker.set_event(333, purpose="other")
        attacker.delete_event(130)
        reports = [_verify(runtime, workers) for workers in (0, 2, 3)]
        for report in reports:
            (finding,) = report.findings
            assert finding.kind is Tampering.DELETED
            assert finding.position == 130
            assert report.events == 130
        assert len({repr(report.findings) for report in reports}) == 1
    finally:
        runtime.close()
