"""``IpamDriver.*``: Docker's remote IPAM calls mapped onto a cnm IPAM (:class:`cnm.ipam.LocalIpam`).

Docker asks for a pool when a network is created (``--subnet``, ``--ip-range``,
or none for a default pool), then for the gateway's address, then one address
per endpoint; it gives them back in the reverse order. The IPAM keeps every
allocation in its store, so a restarted plugin hands out no address twice.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from cnm.ipamapi import Ipam
from cnm.kernel import addresses, routes
from cnm.kernel.netns import NetNS
from cnm.plugin import messages as msg
from cnm.types import IPNetwork, parse_address, parse_network

__all__ = ["GLOBAL_ADDRESS_SPACE", "LOCAL_ADDRESS_SPACE", "IpamPlugin", "host_networks"]

log = logging.getLogger(__name__)

LOCAL_ADDRESS_SPACE = "CnmLocal"
"""The one address space cnm has, as Docker's ``GetDefaultAddressSpaces`` names it."""
GLOBAL_ADDRESS_SPACE = "CnmGlobal"
"""Named for the protocol's sake: cnm's IPAM is local, and serves both names from the same pools."""

Route = Callable[[object], dict[str, object]]


def host_networks(host: NetNS) -> list[IPNetwork]:
    """The IPv4 networks of ``host``'s addresses and routes (Docker's docker0 among them), loopback aside."""
    with host.netlink() as nl:
        found: list[IPNetwork] = [a.network for a in addresses.list_addresses(nl) if a.version == 4]
        found += [r.destination for r in routes.list_routes(nl) if r.destination.prefixlen > 0]
    return [n for n in found if not n.is_loopback and not n.is_link_local]


class IpamPlugin:
    """Serves a cnm IPAM as Docker's remote IPAM driver.

    Args:
        ipam: the address manager, e.g. ``LocalIpam(store)``.
        exclude: what a default pool must not overlap, asked at each request;
            e.g. ``lambda: host_networks(host)``, so that a network without
            ``--subnet`` never lands on docker0's or the host's own subnets.
    """

    implements = "IpamDriver"

    def __init__(self, ipam: Ipam, *, exclude: Callable[[], Sequence[IPNetwork]] | None = None) -> None:
        self.ipam = ipam
        self._exclude = exclude

    def routes(self) -> dict[str, Route]:
        """The protocol's methods this plugin answers, by their path without the slash."""
        return {
            "IpamDriver.GetCapabilities": self.get_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.get_default_address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.release_pool,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    def get_capabilities(self, body: object) -> dict[str, object]:
        """No MAC address needed; Docker need not replay requests after a restart (the store keeps them)."""
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, body: object) -> dict[str, object]:
        """The names of cnm's address space."""
        return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE, "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    def request_pool(self, body: object) -> dict[str, object]:
        """A subnet for a network: the one asked for, or the first free default pool clear of the host's networks."""
        req = msg.RequestPoolRequest.parse(body)
        subnet = parse_network(req.pool) if req.pool else None
        ip_range = parse_network(req.sub_pool, "ip range") if req.sub_pool else None
        exclude = self._exclude() if subnet is None and self._exclude is not None else ()
        pool = self.ipam.request_pool(subnet=subnet, ip_range=ip_range, exclude=exclude, v6=req.v6, owner="docker")
        log.info("pool %s handed out (%s)", pool.id, pool.subnet)
        return {"PoolID": pool.id, "Pool": str(pool.subnet), "Data": {}}

    def release_pool(self, body: object) -> dict[str, object]:
        """Give the pool back (with any address still in it); an unknown pool succeeds."""
        req = msg.ReleasePoolRequest.parse(body)
        self.ipam.release_pool(req.pool_id)
        return {}

    def request_address(self, body: object) -> dict[str, object]:
        """An address with the pool's prefix length: the one asked for, the gateway, or the first free one."""
        req = msg.RequestAddressRequest.parse(body)
        pool = self.ipam.get_pool(req.pool_id)
        wanted = parse_address(req.address) if req.address else None
        if wanted is None and req.for_gateway:
            # Docker's gateway is the subnet's first address, even when --ip-range is elsewhere.
            wanted = pool.subnet.network_address + 1
        address = self.ipam.request_address(req.pool_id, wanted, owner="gateway" if req.for_gateway else "")
        return {"Address": str(ipaddress.ip_interface(f"{address}/{pool.subnet.prefixlen}")), "Data": {}}

    def release_address(self, body: object) -> dict[str, object]:
        """Give the address back; one not allocated succeeds."""
        req = msg.ReleaseAddressRequest.parse(body)
        self.ipam.release_address(req.pool_id, parse_address(req.address.split("/")[0]))
        return {}
