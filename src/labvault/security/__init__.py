"""The security team's tools: break-glass grants, alerts, and their review."""
