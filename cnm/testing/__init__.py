"""Test support for cnm and for driver authors.

Opt in to the pytest fixtures with ``pytest_plugins = ["cnm.testing.fixtures"]``:
throwaway host and outside namespaces, a controller bound to them, and
process tracking. Nothing they make touches the machine's own namespace.
"""
