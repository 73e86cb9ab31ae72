"""Appointment reminders by email and SMS, the day before (``labvault reminders send``)."""
