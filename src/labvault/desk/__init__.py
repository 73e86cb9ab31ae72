"""The lab desk (accueil): the day's schedule, check-in, identity checks, walk-ins, rounds."""
