"""cnm's firewall backends: ``iptables``, ``nftables``, ``none`` and ``recording``.

The contract they implement, and how one is chosen, is :mod:`cnm.firewallapi`;
this package holds backends only. Each is registered under the entry-point
group ``cnm.firewalls`` (pyproject.toml), as a third-party backend would be.

The contract's names used to live here. They still resolve, with a
DeprecationWarning, for one release: import them from :mod:`cnm.firewallapi`.
"""

from __future__ import annotations

import importlib
import warnings

__all__: list[str] = []

# Deprecated since 0.2: name -> the module that holds it now.
_MOVED = {
    **dict.fromkeys(
        (
            "BACKENDS",
            "BackendName",
            "ClosableFirewall",
            "Firewall",
            "FirewallNetwork",
            "LinkRule",
            "NetworkRules",
            "PortMapping",
            "open_firewall",
            "port_mappings",
        ),
        "cnm.firewallapi",
    ),
    "NoFirewall": "cnm.firewall.none",
}


def __getattr__(name: str) -> object:
    """The contract's old home: resolve a moved name with a DeprecationWarning."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"cnm.firewall.{name} moved to {module}.{name}; import it from there "
        "(the old names go one release after they moved)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
