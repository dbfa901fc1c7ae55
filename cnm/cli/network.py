"""``cnm network ...`` and ``cnm endpoint ...``: networks and the endpoints on them."""

from __future__ import annotations

import argparse
import functools
from typing import Any, TextIO

from cnm import Controller, IPAMConfig, errors
from cnm.cli._common import Leaf, each, key_value, link, print_inspect, print_json, print_table
from cnm.handles import Endpoint, Network
from cnm.steps import Steps

__all__ = ["add_commands"]


def _network_create(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    ipam = IPAMConfig(
        subnet=args.subnet, gateway=args.gateway, ip_range=args.ip_range, aux_addresses=dict(args.aux_address)
    )
    net = ctl.create_network(
        args.name,
        driver=args.driver,
        ipam=ipam,
        options=dict(args.opt),
        internal=args.internal,
        labels=dict(args.label),
    )
    out.write(net.id + "\n")
    return 0


def _network_ls(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    nets = ctl.networks()
    if args.format == "json":
        print_json(
            [
                {
                    "Id": n.id,
                    "Name": n.name,
                    "Driver": n.driver,
                    "Subnet": n.subnet,
                    "Gateway": n.gateway,
                    "Internal": n.internal,
                    "Endpoints": [e.name for e in n.endpoints()],
                }
                for n in nets
            ],
            out,
        )
        return 0
    rows = [
        [
            n.id[:12],
            n.name,
            n.driver,
            n.subnet or "-",
            n.gateway or "-",
            "yes" if n.internal else "no",
            len(n.endpoints()),
        ]
        for n in nets
    ]
    print_table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS"], rows, out)
    return 0


def _network_inspect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    print_inspect([ctl.network(ref).inspect() for ref in args.networks], args.format, out)
    return 0


def _network_rm(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    def remove(ref: str) -> None:
        net = ctl.network(ref)
        net.delete()
        out.write(net.name + "\n")

    return each(args.networks, remove)


def _network_connect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    net = ctl.network(args.network)
    sandbox = ctl.sandbox(args.sandbox)
    with Steps(f"connect sandbox {sandbox.name} to network {net.name}", ctl.observer) as steps:
        # The endpoint is named after the sandbox, as Docker names a container's endpoint.
        endpoint = steps.run(
            "create endpoint", lambda: net.create_endpoint(sandbox.name, ip=args.ip, aliases=args.alias)
        )
        steps.done("create endpoint", endpoint.delete)
        steps.run("join", lambda: endpoint.join(sandbox), undo=endpoint.leave)
        for target, alias in args.link:
            steps.run(f"link {target} as {alias}", functools.partial(sandbox.link, target, alias, network=net.name))
            steps.done(f"link {target} as {alias}", functools.partial(sandbox.unlink, alias))
    return 0


def _network_disconnect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    net = ctl.network(args.network)
    try:
        sandbox = ctl.sandbox(args.sandbox)
    except errors.SandboxNotFound:
        joined: list[Endpoint] = []
    else:
        joined = [e for e in sandbox.endpoints() if e.network == net]
    if not joined:
        # A sandbox deleted after `network connect` leaves the endpoint the connect made
        # (named after it) behind; disconnecting it by the sandbox's name removes it.
        left = _endpoint_named(net, args.sandbox)
        if left is None or left.sandbox is not None:
            raise errors.EndpointNotFound(
                f"sandbox {args.sandbox!r} is not connected to network {net.name!r}; "
                f"see `cnm sandbox inspect {args.sandbox}` or `cnm endpoint ls {net.name}`"
            )
        joined = [left]
    for endpoint in joined:
        endpoint.delete()  # leaves first, as docker network disconnect removes the endpoint
    return 0


def _endpoint_named(net: Network, name: str) -> Endpoint | None:
    return next((e for e in net.endpoints() if e.name == name), None)


def _network_prune(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    removed = []
    for net in ctl.networks():
        if net.endpoints():
            continue
        try:
            net.delete()
        except errors.Forbidden:  # the predefined networks stay, as Docker's do
            continue
        removed.append(net.name)
    if removed:
        out.write("Deleted Networks:\n" + "".join(f"{name}\n" for name in removed))
    return 0


# --- endpoint --------------------------------------------------------------------------------------


def _endpoint_ls(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    endpoints = ctl.network(args.network).endpoints()
    if args.format == "json":
        print_json(
            [
                {
                    "Name": e.name,
                    "Sandbox": e.sandbox.name if e.sandbox is not None else None,
                    "Interface": e.ifname,
                    "IPAddress": e.ip,
                    "Ports": [str(p) for p in e.ports],
                }
                for e in endpoints
            ],
            out,
        )
        return 0
    rows = [
        [
            e.name,
            e.sandbox.name if e.sandbox is not None else "-",
            e.ifname or "-",
            e.ip or "-",
            ", ".join(str(p) for p in e.ports) or "-",
        ]
        for e in endpoints
    ]
    print_table(["NAME", "SANDBOX", "INTERFACE", "IP ADDRESS", "PORTS"], rows, out)
    return 0


def _endpoint_rm(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    net = ctl.network(args.network)

    def remove(ref: str) -> None:
        endpoint = net.endpoint(ref)
        endpoint.delete()  # leaves its sandbox first if it is joined
        out.write(endpoint.name + "\n")

    return each(args.endpoints, remove)


# --- the parser ------------------------------------------------------------------------------------


def add_commands(commands: Any, leaf: Leaf) -> None:
    """Add ``network`` and ``endpoint`` and their subcommands."""
    network = commands.add_parser("network", help="manage networks", description="Manage networks.")
    net_cmds = network.add_subparsers(dest="network_cmd", metavar="COMMAND", required=True)
    p = leaf(net_cmds, "create", _network_create, "create a network")
    p.add_argument("name")
    p.add_argument("-d", "--driver", default="bridge", help="the driver (default %(default)s)")
    p.add_argument("--subnet", help="CIDR, e.g. 172.28.0.0/16 (default: a free pool)")
    p.add_argument("--gateway", help="the gateway address (default: the first host address)")
    p.add_argument("--ip-range", help="allocate endpoint addresses from this CIDR inside the subnet")
    p.add_argument(
        "--aux-address", type=key_value, action="append", default=[], metavar="NAME=IP", help="reserve an address"
    )
    p.add_argument("--internal", action="store_true", help="no traffic leaves the network")
    p.add_argument(
        "-o", "--opt", type=key_value, action="append", default=[], metavar="KEY=VALUE", help="a driver option"
    )
    p.add_argument("--label", type=key_value, action="append", default=[], metavar="KEY=VALUE", help="a label")
    leaf(net_cmds, "ls", _network_ls, "list networks", aliases=["list"])
    p = leaf(net_cmds, "inspect", _network_inspect, "show networks as docker network inspect does")
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = leaf(net_cmds, "rm", _network_rm, "delete networks", aliases=["remove"])
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = leaf(net_cmds, "connect", _network_connect, "connect a sandbox to a network")
    p.add_argument("network")
    p.add_argument("sandbox")
    p.add_argument("--ip", help="the address to take (default: the next free one)")
    p.add_argument(
        "--link",
        type=link,
        action="append",
        default=[],
        metavar="NAME:ALIAS",
        help="a legacy link to a sandbox on this network (repeatable)",
    )
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="a name other sandboxes on the network resolve to this one (user-defined networks; repeatable)",
    )
    p = leaf(net_cmds, "disconnect", _network_disconnect, "disconnect a sandbox from a network, deleting its endpoint")
    p.add_argument("network")
    p.add_argument("sandbox", help="the sandbox, or the name of a deleted one whose endpoint was left behind")
    leaf(net_cmds, "prune", _network_prune, "delete every network without endpoints (not the predefined ones)")

    endpoint = commands.add_parser("endpoint", help="manage endpoints", description="Manage a network's endpoints.")
    ep_cmds = endpoint.add_subparsers(dest="endpoint_cmd", metavar="COMMAND", required=True)
    p = leaf(ep_cmds, "ls", _endpoint_ls, "list a network's endpoints", aliases=["list"])
    p.add_argument("network")
    p = leaf(ep_cmds, "rm", _endpoint_rm, "delete endpoints (leaving their sandbox first)", aliases=["remove"])
    p.add_argument("network")
    p.add_argument("endpoints", nargs="+", metavar="ENDPOINT")
