"""Application-level encryption: data keys, envelopes, key providers, blind indexes."""
