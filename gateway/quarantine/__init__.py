"""The quarantine: where held (and, optionally, rejected) mail waits for an analyst."""
