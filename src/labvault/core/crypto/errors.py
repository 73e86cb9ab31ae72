"""Crypto errors. Messages name places (table, column, row), never values or keys."""


class CryptoError(Exception):
    """Base class of every crypto failure."""


class DecryptionError(CryptoError):
    """A ciphertext did not authenticate: wrong key, wrong place, or tampered bytes."""


class KeyProviderError(CryptoError):
    """The key provider is missing, misconfigured or refused an operation."""
