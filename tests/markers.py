"""Markers from the fixtures a test uses, so the fast tests run alone:

    pytest -m "not postfix and not postgres and not browser and not slow"

tests/conftest.py applies them at collection (:func:`markers_for`). A test
that takes seconds by itself says so where it is written
(``@pytest.mark.slow``).
"""

from __future__ import annotations

import pytest

# What a test needs, from the fixtures it uses (and a store parametrized
# over PostgreSQL). Tests that start a private Postfix some other way say so
# themselves (@pytest.mark.postfix).
MARKERS_OF_FIXTURE: dict[str, tuple[str, ...]] = {
    "postfix": ("postfix",),
    "postgres": ("postgres",),
    "postgres_server": ("postgres",),
    "cluster": ("postfix", "postgres"),  # tests/test_multinode.py: nodes on one PostgreSQL
    "browser": ("browser",),
}


def markers_for(item: pytest.Item) -> set[str]:
    """The markers a collected test gets for what it needs."""
    needs: set[str] = set()
    for fixture in getattr(item, "fixturenames", ()):
        needs.update(MARKERS_OF_FIXTURE.get(fixture, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgresql" in callspec.params.values():
        needs.add("postgres")
    return needs
