"""Retention of booking data: expired holds, prescriptions, old appointments' content
(``labvault retention run``)."""
