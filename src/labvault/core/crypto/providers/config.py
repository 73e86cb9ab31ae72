"""What a process needs to build the key provider: picklable, so worker processes get it.

It names where the keys are (specs, file paths, addresses) and never carries key material;
an inline Transit token (LABVAULT_TRANSIT_TOKEN) is not pickled either: a worker reads it
again from its own environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labvault.core.crypto.providers.transit import TransitOptions
from labvault.core.crypto.secret import Secret

if TYPE_CHECKING:
    from labvault.core.config import Settings

TOKEN_VARIABLE = "LABVAULT_TRANSIT_TOKEN"  # noqa: S105 - the variable's name, not a token


@dataclass(frozen=True, slots=True)
class KeyProviderConfig:
    """LABVAULT_KEY_PROVIDER (``spec``), LABVAULT_PREVIOUS_KEY_PROVIDER and their options.

    ``transit`` holds the Transit connection and authentication options shared by every
    ``transit:`` spec (its address, mount and key are replaced by each spec's own).
    """

    spec: str
    default_key_file: str
    previous_spec: str | None = None
    transit: TransitOptions | None = None
    token: Secret[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyProviderConfig:
        token = settings.transit_token
        return cls(
            spec=settings.key_provider,
            default_key_file=str(settings.default_key_file),
            previous_spec=settings.previous_key_provider,
            transit=_transit_options(settings),
            token=None if token is None else Secret(token.get_secret_value()),
        )

    def transit_token(self) -> Secret[str] | None:
        """The inline token: given here, or (in a worker, after unpickling) the environment's."""
        if self.token is not None:
            return self.token
        value = os.environ.get(TOKEN_VARIABLE, "").strip()
        return Secret(value) if value else None

    def __reduce__(self) -> tuple[Any, ...]:
        # The token stays behind: the receiving process reads it from its environment.
        return (
            KeyProviderConfig,
            (self.spec, self.default_key_file, self.previous_spec, self.transit),
        )


def _transit_options(settings: Settings) -> TransitOptions | None:
    from labvault.core.config import parse_transit_spec

    specs = [settings.key_provider, settings.previous_key_provider or ""]
    transit_specs = [spec for spec in specs if spec.startswith("transit:")]
    if not transit_specs:
        return None
    where = parse_transit_spec(transit_specs[0])

    def path(value: os.PathLike[str] | None) -> str | None:
        return None if value is None else os.fspath(value)

    return TransitOptions(
        address=where.address,
        mount=where.mount,
        key=where.key,
        derivation_key=settings.transit_derivation_key,
        token_file=path(settings.transit_token_file),
        role_id=settings.transit_role_id,
        secret_id_file=path(settings.transit_secret_id_file),
        approle_mount=settings.transit_approle_mount,
        ca_file=path(settings.transit_ca_file),
        client_cert_file=path(settings.transit_client_cert_file),
        client_key_file=path(settings.transit_client_key_file),
        namespace=settings.transit_namespace,
        timeout_seconds=settings.transit_timeout_seconds,
        retries=settings.transit_retries,
        unwrap_batch=settings.transit_unwrap_batch,
    )
