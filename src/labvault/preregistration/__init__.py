"""Pre-registration before a visit: declared identity, insurance, prescription uploads."""
