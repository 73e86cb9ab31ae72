"""The exam catalog: each organization's exams, their preparation rules and durations."""
