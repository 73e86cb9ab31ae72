"""Sampling appointments at a lab site or at home."""
