"""Wires settings to the real components: the database and the key provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.audit.checkpoints import TrustedKeys
from labvault.core.audit.sequencer import AuditLog
from labvault.core.audit.witness import FileAuditWitness
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantSealerSpec, wrapped_index_keys
from labvault.core.crypto.providers import KeyProvider, load_key_provider
from labvault.core.db import create_db_engine, make_session_factory
from labvault.core.mail import Mailer, load_mailer
from labvault.core.ratelimit import LimitsRateLimiter, RateLimiter


@dataclass
class Runtime:
    """One process's handles on storage and keys. Built once at start-up, shared by requests."""

    settings: Settings
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_db_engine(self.settings.sqlalchemy_url)
        self.sessions = make_session_factory(self.engine)

    @cached_property
    def key_provider(self) -> KeyProvider:
        """Loaded on first use; raises a clear KeyProviderError if the key is missing or exposed."""
        return load_key_provider(self.settings.key_provider, str(self.settings.key_file))

    @cached_property
    def audit_log(self) -> AuditLog:
        """Sequencing, checkpoints and the witness, configured from the settings."""
        provider = self.key_provider
        return AuditLog(
            self.sessions,
            provider,
            FileAuditWitness(self.settings.witness_dir, TrustedKeys.from_provider(provider)),
            checkpoint_every_events=self.settings.audit_checkpoint_events,
            checkpoint_every_seconds=self.settings.audit_checkpoint_seconds,
        )

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """Counters on LABVAULT_RATELIMIT_STORAGE (memory: this process; Redis: all of them)."""
        return LimitsRateLimiter(self.settings.ratelimit_storage)

    @cached_property
    def mailer(self) -> Mailer:
        """Built on first use from LABVAULT_MAILER; a wrong setting raises a clear ValueError."""
        settings = self.settings
        return load_mailer(settings.mailer, settings.resolved_data_dir, settings.mail_from)

    def sealer_spec(self, session: Session, tenant_id: uuid.UUID) -> TenantSealerSpec:
        """What a worker process needs to seal this tenant's data: settings, wrapped keys."""
        return TenantSealerSpec(
            provider_setting=self.settings.key_provider,
            default_key_file=str(self.settings.key_file),
            tenant_id=tenant_id,
            wrapped_index_keys=tuple(
                (kind.value, blob) for kind, blob in wrapped_index_keys(session, tenant_id).items()
            ),
        )

    def close(self) -> None:
        self.engine.dispose()
        if "rate_limiter" in self.__dict__:
            self.rate_limiter.close()
