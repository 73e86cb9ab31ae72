"""labvault: the patient platform of French medical-analysis laboratories, encrypted by default."""

__version__ = "0.1.0"
