"""The files here are other projects' test data and test code, kept as they
were published; their cases run through the gateway from tests/test_vectors_*.py.
Their own test modules import packages the gateway does not use: never collect them."""

collect_ignore_glob = ["*.py"]
