"""Wires settings to the real components: the database and the key provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from labvault.core import tenancy
from labvault.core.access.decrypt import uninstall_guards
from labvault.core.audit.checkpoints import TrustedKeys
from labvault.core.audit.events import CLIENT_ADDRESS_LABEL, ClientAddressHasher
from labvault.core.audit.sequencer import AuditLog
from labvault.core.audit.witness import FileAuditWitness
from labvault.core.config import Settings
from labvault.core.crypto.derived import DerivedKeys
from labvault.core.crypto.keyring import TenantSealerSpec, wrapped_index_key_rows
from labvault.core.crypto.providers import KeyProvider, KeyProviderConfig, load_key_provider
from labvault.core.db import create_db_engine, make_session_factory
from labvault.core.mail import Mailer, load_mailer
from labvault.core.ratelimit import LimitsRateLimiter, RateLimiter
from labvault.core.tenancy import DeploymentTenant


@dataclass
class Runtime:
    """One process's handles on storage and keys. Built once at start-up, shared by requests.

    Sessions are bound for PostgreSQL row-level security (see ``labvault.core.tenancy``):
    ``sessions`` to the organization the deployment serves, ``tenant_sessions(id)`` to one
    named tenant, ``audit_sessions`` to the audit log's cross-tenant maintenance, and
    ``admin_sessions`` connect as the schema owner (``LABVAULT_ADMIN_DATABASE_URL``).
    """

    settings: Settings
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    audit_sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_db_engine(self.settings.sqlalchemy_url)
        self.sessions = make_session_factory(
            self.engine, tenancy.session_info(DeploymentTenant(self.settings.organization))
        )
        self.audit_sessions = make_session_factory(
            self.engine, tenancy.session_info(scope=tenancy.AUDIT_LOG_SCOPE)
        )

    def tenant_sessions(self, tenant_id: uuid.UUID) -> sessionmaker[Session]:
        """Sessions whose every transaction acts for ``tenant_id`` only."""
        return make_session_factory(self.engine, tenancy.session_info(tenant_id))

    @cached_property
    def admin_engine(self) -> Engine:
        """The schema owner's connections (migrations, grants, new organizations): the main
        engine itself unless LABVAULT_ADMIN_DATABASE_URL names another role."""
        if self.settings.sqlalchemy_admin_url == self.settings.sqlalchemy_url:
            return self.engine
        return create_db_engine(self.settings.sqlalchemy_admin_url)

    @cached_property
    def admin_sessions(self) -> sessionmaker[Session]:
        """Unbound sessions as the owner, which row-level security does not restrict."""
        return make_session_factory(self.admin_engine)

    @cached_property
    def key_provider(self) -> KeyProvider:
        """Loaded on first use; raises a clear KeyProviderError if the key is missing or exposed."""
        return load_key_provider(self.key_provider_config)

    @cached_property
    def key_provider_config(self) -> KeyProviderConfig:
        """Where the keys are, picklable: what worker processes rebuild the provider from."""
        return KeyProviderConfig.from_settings(self.settings)

    @cached_property
    def derived_keys(self) -> DerivedKeys:
        """The provider's HKDF derivations, each made once in this process."""
        return DerivedKeys(self.key_provider)

    @cached_property
    def client_address_hasher(self) -> ClientAddressHasher:
        """The keyed hash of client addresses in audit events (its key derived once)."""
        return ClientAddressHasher(self.derived_keys.get(CLIENT_ADDRESS_LABEL))

    @cached_property
    def audit_log(self) -> AuditLog:
        """Sequencing, checkpoints and the witness, configured from the settings."""
        provider = self.key_provider
        return AuditLog(
            self.audit_sessions,
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
            key_provider=self.key_provider_config,
            tenant_id=tenant_id,
            wrapped_index_keys=wrapped_index_key_rows(session, tenant_id),
        )

    def close(self) -> None:
        uninstall_guards(self.engine)
        self.engine.dispose()
        if "admin_engine" in self.__dict__:
            self.admin_engine.dispose()
        if "rate_limiter" in self.__dict__:
            self.rate_limiter.close()
        if "key_provider" in self.__dict__:
            close = getattr(self.key_provider, "close", None)  # Transit's HTTP connections
            if callable(close):
                close()
