"""Site schedules: opening hours, closures, sampling boxes, and the slots they give."""
