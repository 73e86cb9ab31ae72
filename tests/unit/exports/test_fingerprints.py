"""Fingerprint digests survive what a copy does to a CSV line (labvault.exports)."""

from __future__ import annotations

import datetime as dt

from labvault.exports.fingerprints import find_digests, fingerprint_count, identity_digest


def test_a_copy_with_other_spelling_delimiter_and_date_format_still_matches() -> None:
    """Case, accents, hyphens, spacing, the delimiter, the column order and an ISO date do
    not hide a fingerprint row; a line without its birth date does."""
    key = b"k" * 32
    digest = identity_digest(key, "Lefèvre-Dupont", "Jean Éric", dt.date(1980, 2, 29))
    for line in (
        "08:10;Lefèvre-Dupont;;Jean Éric;29/02/1980;Validée;réservé",
        "jean eric\tLEFEVRE DUPONT\t1980-02-29",
        '"LEFÈVRE  dupont",1980-02-29,"jean-éric",x',
    ):
        assert digest in find_digests([line], [key])[key], line
    assert digest not in find_digests(["Lefèvre-Dupont;Jean Éric;Validée"], [key])[key]
    assert digest not in find_digests(["Lefèvre-Dupont;Jean Éric;28/02/1980"], [key])[key]


def test_the_number_of_fingerprint_rows_grows_with_the_export() -> None:
    assert [fingerprint_count(n) for n in (0, 49, 50, 299, 300, 5000)] == [2, 2, 3, 3, 4, 4]
