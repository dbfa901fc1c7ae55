"""``cnm plugin serve``: serve a cnm driver (and cnm's IPAM) to a Docker engine.

::

    cnm [--state-dir DIR] [--host-netns NS] [--firewall nftables|iptables|none] \\
        plugin serve --driver NAME [--ipam] [--socket PATH]

Beside a Docker engine on Debian 12 (iptables-nft) give ``--firewall nftables``:
that backend lets cnm's bridges through Docker's ``FORWARD`` drop policy.
Listens on ``/run/docker/plugins/cnm-NAME.sock`` by default, so Docker knows
the driver as ``cnm-NAME``: ``docker network create -d cnm-bridge net1``. The
plugin's store is ``DIR/plugin/cnm-NAME``: a restarted plugin carries on where
it stopped. SIGTERM or SIGINT stops it; what it made stays, as Docker's
networks do when their daemon stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, TextIO

from cnm import Controller, errors
from cnm.cli._common import EXIT_ERROR, Leaf, UsageError, print_error
from cnm.plugin import default_socket, open_plugin, plugin_name

__all__ = ["add_commands", "serve"]


def _needs_no_controller(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    raise UsageError("cnm plugin serve runs without a controller")  # main() calls serve() instead


def serve(args: argparse.Namespace) -> int:
    """Run the plugin until a signal stops it; the exit status."""
    name = plugin_name(args.driver) if args.driver else "cnm-ipam"
    socket_path = args.socket or default_socket(args.driver or "ipam")
    if not args.driver and not args.ipam:
        raise UsageError("give --driver NAME, --ipam, or both")
    try:
        plugin = open_plugin(
            args.driver,
            ipam=args.ipam,
            state_dir=os.path.join(args.state_dir, "plugin", name),
            socket_path=socket_path,
            host_netns=args.host_netns,
            firewall=args.firewall,
        )
    except (errors.CNMError, ExceptionGroup) as exc:
        print_error(exc)
        return EXIT_ERROR
    except PermissionError as exc:
        print(f"cnm: error: {exc}; the plugin works with namespaces and the firewall: run it as root", file=sys.stderr)
        return EXIT_ERROR

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for the serving loop, which runs in this very thread: ask from another.
        threading.Thread(target=plugin.server.shutdown, name="cnm-plugin-stop").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"cnm plugin {name}: serving {', '.join(plugin.server.implements)} on {socket_path}", file=sys.stderr)
    sys.stderr.flush()
    try:
        plugin.serve_forever()
    finally:
        plugin.close()
    return 0


def add_commands(commands: Any, leaf: Leaf) -> None:
    """Add ``plugin serve``."""
    group = commands.add_parser(
        "plugin", help="serve cnm drivers to Docker", description="Serve cnm drivers to a Docker engine."
    )
    sub = group.add_subparsers(dest="plugin_cmd", metavar="COMMAND", required=True)
    p = leaf(
        sub,
        "serve",
        _needs_no_controller,
        "serve a cnm driver (and cnm's IPAM) over Docker's remote driver protocol, until SIGTERM",
    )
    p.add_argument("--driver", help="the cnm driver to serve as Docker's network driver cnm-DRIVER (e.g. bridge)")
    p.add_argument("--ipam", action="store_true", help="also serve cnm's IPAM (docker network create --ipam-driver)")
    p.add_argument("--socket", help="the socket to listen on (default /run/docker/plugins/cnm-DRIVER.sock)")
    p.set_defaults(standalone=serve)
