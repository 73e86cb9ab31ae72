"""Fuzzing the CSV reader: any input gives patients, row problems or a file error; nothing else."""

from __future__ import annotations

import csv
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.patients.importer import COLUMNS, CsvFileError, RowProblem, read_rows
from labvault.patients.schemas import PatientInput

HEADER = ",".join(COLUMNS)
MARK = "\u00a7"
cell = st.one_of(
    st.text(max_size=30).map(lambda value: f"{MARK}{value}{MARK}"),
    st.sampled_from(
        ["", "M", "F", "1990-01-01", "2 95 10 99 126 111 93", "06 12 34 56 78", '"', ";"]
    ),
)
row = st.lists(cell, min_size=len(COLUMNS), max_size=len(COLUMNS))
# Empty or whitespace only (str.isspace: tab, no-break space, em space): a blank row.
blank_row = st.lists(
    st.sampled_from(["", " ", "\t", "\u00a0", "\u2003"]),
    min_size=len(COLUMNS),
    max_size=len(COLUMNS),
)


def _consume(text: str) -> list[tuple[int, PatientInput | list[RowProblem]]]:
    return list(read_rows(io.StringIO(text)))


@given(st.text(max_size=400))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_text_never_escapes_as_an_unexpected_error(text: str) -> None:
    try:
        outcomes = _consume(text)
    except CsvFileError:
        return
    for row_number, outcome in outcomes:
        assert row_number >= 2
        assert isinstance(outcome, PatientInput) or all(isinstance(p, RowProblem) for p in outcome)


@given(st.lists(st.one_of(row, blank_row), max_size=8))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_rows_under_a_valid_header_each_get_an_outcome(rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    outcomes = _consume(buffer.getvalue())
    # read_records skips a record whose cells are all empty or whitespace (str.strip); every
    # other record gets exactly one outcome, numbered by its place in the file (header: 1).
    non_blank = [number for number, r in enumerate(rows, start=2) if any(c.strip() for c in r)]
    assert len(outcomes) == len(non_blank)
    assert [row_number for row_number, _ in outcomes] == non_blank
    for _, outcome in outcomes:
        if isinstance(outcome, list):
            for problem in outcome:
                assert problem.field
                assert problem.reason
                # Reasons name rules, never the offending value (every cell carries a mark).
                assert MARK not in problem.reason


def test_semicolon_files_and_bom_are_read() -> None:
    text = (
        "\ufeffbirth_name;first_names;birth_date;sex;nir\n"
        "Dupont;Zoé;1995-10-01;F;2 95 10 99 126 111 93\n"
    )
    ((row_number, outcome),) = _consume(text)
    assert row_number == 2
    assert isinstance(outcome, PatientInput)
    assert outcome.nir is not None
    assert outcome.nir.compact == "295109912611193"


def test_blank_lines_are_skipped_but_keep_row_numbers() -> None:
    text = f"{HEADER}\n\n" + ",".join(["Durand", "", "Paul", "1980-01-01", "M"] + [""] * 7) + "\n"
    ((row_number, outcome),) = _consume(text)
    assert row_number == 3
    assert isinstance(outcome, PatientInput)
