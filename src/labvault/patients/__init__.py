"""Patients: identity, contact details, NIR and INS."""
