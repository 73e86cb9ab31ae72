"""Root key management from the command line: ``labvault keys status|rotate|rewrap|retire|
migrate`` (see :mod:`labvault.core.crypto.rewrap` and docs/keys.md)."""
