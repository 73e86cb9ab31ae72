"""CSV import of patients: the migration path for a lab leaving another provider.

A structural pre-pass (``check_file``) refuses a file that is not UTF-8, lacks a valid
header or holds malformed CSV before anything is written. Every row is validated before
anything is written; valid rows are written in batches, each in one transaction, so a crash
never leaves a half-written patient and a failing batch writes nothing. Re-importing a file
creates no duplicates (see ``register_many``). Problems are reported by row number and
field, never with the value (invariant I5).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from labvault.core.crypto.keyring import Keyring, SealerFactory
from labvault.patients.bulk import (
    DEFAULT_BATCH_SIZE,
    ImportReport,
    Record,
    RowProblem,
    register_records,
    to_input,
)
from labvault.patients.ins import InsOid
from labvault.patients.schemas import PatientInput

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

COLUMNS: tuple[str, ...] = (
    "birth_name",
    "used_name",
    "first_names",
    "birth_date",
    "sex",
    "birth_place_code",
    "nir",
    "email",
    "phone",
    "address",
    "postal_code",
    "city",
)
REQUIRED_COLUMNS: frozenset[str] = frozenset({"birth_name", "first_names", "birth_date", "sex"})
_CHUNK = 1 << 20  # bytes read at a time by the pre-pass
_MAX_POSITIONS = 20  # unknown column positions named in an error


class CsvFileError(ValueError):
    """The file as a whole cannot be imported; nothing was written."""


def check_file(path: Path) -> None:
    """Refuse, before anything is imported, a file that cannot be imported as a whole.

    One streaming pass (memory stays flat whatever the size): the bytes must be UTF-8, the
    header valid, and every record well-formed CSV. An unbalanced quote would otherwise
    swallow the rest of the file into one field, and the import would silently miss rows.
    Messages name byte offsets, column positions and row numbers, never a value (I5).
    """
    with (
        path.open("rb") as raw,
        io.BufferedReader(_Utf8Checked(raw), buffer_size=_CHUNK) as checked,
        io.TextIOWrapper(checked, encoding="utf-8-sig", newline="") as text,
    ):
        _, delimiter = _read_header(text)
        for row_number, values in _csv_rows(text, delimiter):
            if values is None:
                raise CsvFileError(
                    f"row {row_number}: malformed CSV (unbalanced quotes or stray characters); "
                    "nothing was imported"
                )


class _Utf8Checked(io.RawIOBase):
    """A binary file's bytes, passed through only once they are known to be valid UTF-8."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0  # of the next byte read from the file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._raw.read(len(view))
        if not chunk:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise CsvFileError(
                    "the file is not UTF-8 (it ends in the middle of a character)"
                ) from None
            return 0
        pending = len(self._decoder.getstate()[0])  # bytes of a character cut by the last read
        try:
            self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            offset = self._offset - pending + exc.start
            raise CsvFileError(
                f"the file is not UTF-8 (invalid byte at offset {offset}); "
                "export it again as 'CSV UTF-8'"
            ) from None
        self._offset += len(chunk)
        view[: len(chunk)] = chunk
        return len(chunk)


def read_rows(
    text: io.TextIOBase, *, ins_oid: InsOid = InsOid.NIR
) -> Iterator[tuple[int, PatientInput | list[RowProblem]]]:
    """Yield (row number, patient or problems) for each data row of a patients CSV."""
    for row_number, record in read_records(text):
        if isinstance(record, list):
            yield row_number, record
        else:
            yield row_number, to_input(row_number, record, ins_oid)


def read_records(text: io.TextIOBase) -> Iterator[Record]:
    """Yield (row number, raw fields or structural problems) for each data row.

    The header is checked before the first row is yielded; a bad header raises
    :class:`CsvFileError`.
    """
    header, delimiter = _read_header(text)
    for row_number, values in _csv_rows(text, delimiter):
        if values is None:  # import_patients ran check_file first: only if the file changed
            yield row_number, [RowProblem(row_number, "row", "malformed CSV (unbalanced quotes)")]
            continue
        if not values or all(not value.strip() for value in values):
            continue
        if len(values) != len(header):
            reason = f"has {len(values)} fields, the header has {len(header)}"
            yield row_number, [RowProblem(row_number, "row", reason)]
            continue
        yield row_number, dict(zip(header, values, strict=True))


def _csv_rows(text: io.TextIOBase, delimiter: str) -> Iterator[tuple[int, list[str] | None]]:
    """(row number, fields) after the header, numbered as a spreadsheet; ``None`` fields for
    a record that is not valid CSV."""
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    row_number = 1
    while True:
        row_number += 1
        try:
            yield row_number, next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield row_number, None


def _read_header(text: io.TextIOBase) -> tuple[list[str], str]:
    """The checked column names of the first line, and the delimiter it uses."""
    header_line = text.readline().removeprefix("\ufeff")
    if not header_line.strip():
        raise CsvFileError("the file is empty: expected a header row with the column names")
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    try:
        names = next(csv.reader([header_line], delimiter=delimiter, strict=True))
    except csv.Error:
        raise CsvFileError("the header row is not valid CSV") from None
    header = [name.strip().lower() for name in names]
    _check_header(header)
    return header, delimiter


def _check_header(header: list[str]) -> None:
    # An unknown name is never echoed: in a file without a header row, the "names" are the
    # first patient's values (name, NIR, email). Its position is enough to find it.
    unknown = [
        str(position) for position, name in enumerate(header, start=1) if name not in COLUMNS
    ]
    if unknown:
        shown = ", ".join(unknown[:_MAX_POSITIONS])
        if len(unknown) > _MAX_POSITIONS:
            shown += f" and {len(unknown) - _MAX_POSITIONS} more"
        raise CsvFileError(
            f"unknown column(s) at position(s) {shown}; the first line must be the header row, "
            f"with column names among: {', '.join(COLUMNS)}"
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise CsvFileError(f"duplicated column(s): {', '.join(duplicated)}")
    missing = sorted(REQUIRED_COLUMNS - set(header))
    if missing:
        raise CsvFileError(f"missing required column(s): {', '.join(missing)}")


def import_patients(
    path: Path,
    *,
    sessions: sessionmaker[Session],
    open_keyring: Callable[[Session], Keyring],
    sealer: SealerFactory,
    workers: int = 0,
    ins_oid: InsOid = InsOid.NIR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every valid row of ``path``; report the others.

    ``open_keyring`` gives the importing principal's keyring for one batch's session;
    ``sealer`` builds what seals and indexes patients, in ``workers`` processes (or here,
    with 0). ``on_progress`` gets the number of bytes read since its last call.
    """
    check_file(path)  # nothing is written unless the whole file is structurally sound
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        records = read_records(text)
        first = next(records, None)  # checks the header before any worker starts
        last_position = 0

        def progress() -> None:
            nonlocal last_position
            if on_progress is not None:
                position = raw.tell()
                on_progress(position - last_position)
                last_position = position

        report = register_records(
            itertools.chain([first] if first else [], records),
            sessions=sessions,
            open_keyring=open_keyring,
            sealer=sealer,
            workers=workers,
            ins_oid=ins_oid,
            batch_size=batch_size,
            on_batch=lambda _: progress(),
        )
        if on_progress is not None:
            on_progress(path.stat().st_size - last_position)
    return report


def write_rejects(problems: list[RowProblem], path: Path) -> None:
    """Rows and reasons only: the reject file holds no personal value, so it is safe at rest."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "field", "reason"])
        for problem in problems:
            writer.writerow([problem.row, problem.field, problem.reason])
