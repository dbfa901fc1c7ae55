"""Test support for cnm and for driver authors.

Opt in to the pytest fixtures with ``pytest_plugins = ["cnm.testing.fixtures"]``:
throwaway host and outside namespaces, a controller bound to them, and
process tracking. Nothing they make touches the machine's own namespace.
"""

import os

__all__ = ["namespace_prefix"]


def namespace_prefix() -> str:
    """The name prefix of this test process's namespaces: ``cnmt-<pid>-``.

    Tests running at the same time in other processes (xdist workers, other
    test sessions) use other prefixes, so a leak check looks at its own only.
    """
    return f"cnmt-{os.getpid()}-"
