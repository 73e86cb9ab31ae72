"""The tamper-evident audit log (invariant I3); see docs/audit.md.

- ``actions``: the one registry of event tags;
- ``events``: what an event holds, and ``AuditTrail``, which records events in the caller's
  transaction (the keyring records every decryption through it);
- ``merkle``: RFC 6962 hashing, proofs and their strict verifiers;
- ``sequencer``: positions, seals and signed checkpoints (``AuditLog.advance``);
- ``checkpoints`` and ``witness``: signatures, and the copy kept outside the database;
- ``verify``, ``proofs``, ``search``: what investigators run.
"""
