"""Cross-cutting building blocks. Never imports a feature package."""
