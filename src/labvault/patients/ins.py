"""INS (identité nationale de santé): which number system an identifier belongs to, and
how far the identity has been checked."""

from __future__ import annotations

import enum


class InsOid(enum.StrEnum):
    NIR = "1.2.250.1.213.1.4.8"
    NIA = "1.2.250.1.213.1.4.9"
    TEST = "1.2.250.1.213.1.4.10"


class IdentityStatus(enum.StrEnum):
    """PROV: provisional; RECUP: retrieved from INSi, not checked against a document;
    VALI: checked against an identity document; QUAL: both."""

    PROV = "PROV"
    RECUP = "RECUP"
    VALI = "VALI"
    QUAL = "QUAL"


class Sex(enum.StrEnum):
    MALE = "M"
    FEMALE = "F"
