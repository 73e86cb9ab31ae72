"""Bulk exports: step-up, read budgets, fingerprint rows and leak attribution (issue 9)."""
