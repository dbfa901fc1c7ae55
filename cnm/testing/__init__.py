"""Test support for cnm and for driver authors.

Opt in to the pytest fixtures with ``pytest_plugins = ["cnm.testing.fixtures"]``:
throwaway host and outside namespaces, a controller bound to them, and
process tracking. Nothing they make touches the machine's own namespace.
"""

import os

__all__ = ["namespace_prefix"]


def namespace_prefix() -> str:
    """The name prefix of this test process's namespaces: ``cnmt-<xdist worker>-``.

    Tests running in parallel in other workers use other prefixes, so a leak
    check can look at its own namespaces only.
    """
    return f"cnmt-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"
