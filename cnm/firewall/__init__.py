"""cnm's firewall backends: ``iptables``, ``nftables``, ``none`` and ``recording``.

The contract they implement, and how one is chosen, is :mod:`cnm.firewallapi`;
this package holds backends only. Each is registered under the entry-point
group ``cnm.firewalls`` (pyproject.toml), as a third-party backend would be.

The contract's names used to live here. They still resolve, with a
DeprecationWarning, for one release: import them from :mod:`cnm.firewallapi`.
"""

from __future__ import annotations

from cnm._deprecation import moved_names

__all__: list[str] = []

# Deprecated since 0.2: the contract's names moved to cnm.firewallapi.
__getattr__ = moved_names(
    __name__,
    {
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
    },
)
