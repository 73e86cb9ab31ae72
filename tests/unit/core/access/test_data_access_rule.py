"""Patient data is read through the scoped repository only: a static check of the source.

Outside ``labvault.patients.services`` no module may load a whole ``Patient`` row, touch a
sealed column, or unwrap a patient's data key. A few modules may use the non-personal
columns (ids, blind indexes) to find a record without decrypting it; anything else they do
with the model fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import labvault
from labvault.patients.models import ENCRYPTED_FIELDS

SOURCE = Path(labvault.__file__).parent
REPOSITORY_MODULES = {"patients/services.py", "models.py"}
SHAPE_READERS = {
    "security/honey.py": "gives honey records the shape of real ones: ciphertext lengths, "
    "empty columns and creation times, never a value (it never unwraps a patient's key)",
}
"""Modules that may name any column of ``patients`` to read its shape, never its content;
unwrapping a patient's key stays refused to them."""
NON_PERSONAL_COLUMNS = {
    "id",
    "tenant_id",
    "data_key_id",
    "nir_index",
    "email_index",
    "phone_index",
    "name_index",
    "ins_oid",
    "identity_status",
    "created_at",
    "updated_at",
    "erased_at",
}


def _violations(path: Path, root: Path = SOURCE) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    model_names: set[str] = set()
    subject_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if node.module == "labvault.patients.models" and alias.name == "Patient":
                    model_names.add(local)
                if node.module.startswith("labvault.patients") and alias.name == "SUBJECT_TYPE":
                    subject_names.add(local)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id in model_names:
            parent = parents.get(node)
            if isinstance(parent, ast.alias | ast.ImportFrom):
                continue
            if not isinstance(parent, ast.Attribute):
                found.append(f"{where}: uses the whole Patient row")
            elif parent.attr in ENCRYPTED_FIELDS or parent.attr not in NON_PERSONAL_COLUMNS:
                found.append(f"{where}: touches Patient.{parent.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "open_data_keys"
            and node.args
        ):
            subject = node.args[0]
            literal = isinstance(subject, ast.Constant) and subject.value == "patient"
            named = isinstance(subject, ast.Name) and (
                subject.id in subject_names or "PATIENT" in subject.id
            )
            if literal or named:
                found.append(f"{where}: unwraps a patient's data key")
    return found


def test_only_the_repository_reads_patient_data() -> None:
    violations = [
        violation
        for path in sorted(SOURCE.rglob("*.py"))
        if str(path.relative_to(SOURCE)) not in REPOSITORY_MODULES
        and "migrations" not in path.parts
        for violation in _violations(path)
        if str(path.relative_to(SOURCE)) not in SHAPE_READERS or "unwraps" in violation
    ]
    assert violations == []


def test_the_check_catches_each_kind_of_direct_read(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from labvault.patients.models import Patient as P\n"
        "from labvault.patients.services import SUBJECT_TYPE\n"
        "def f(session, keyring):\n"
        "    session.get(P, 1)\n"
        "    session.query(P.birth_name)\n"
        "    session.query(P.nir_index)\n"
        "    keyring.open_data_keys(SUBJECT_TYPE, [], 'x')\n"
        "    keyring.open_data_keys('patient', [], 'x')\n",
        "utf-8",
    )
    found = _violations(bad, tmp_path)
    assert sorted(found) == [
        "probe.py:4: uses the whole Patient row",
        "probe.py:5: touches Patient.birth_name",
        "probe.py:7: unwraps a patient's data key",
        "probe.py:8: unwraps a patient's data key",
    ]
