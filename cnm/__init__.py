"""cnm: Docker's Container Network Model as a Python library.

Typical use::

    from cnm import Controller, IPAMConfig, PortBinding

    ctl = Controller(state_dir="/var/lib/cnm")
    net = ctl.create_network("net1", driver="bridge", ipam=IPAMConfig(subnet="172.28.0.0/16"))
    sb = ctl.create_sandbox("c1", hostname="c1")
    ep = net.create_endpoint("c1-net1", ports=[PortBinding(container_port=80, host_port=8080)])
    ep.join(sb)
    sb.run(["ping", "-c1", "172.28.0.1"])
"""

import importlib
import logging
from typing import TYPE_CHECKING

from cnm import errors
from cnm.types import IPAMConfig, PortBinding

if TYPE_CHECKING:
    from cnm.controller import Controller

__all__ = ["Controller", "IPAMConfig", "PortBinding", "errors"]


def __getattr__(name: str) -> object:
    # Controller brings in the whole library (pyroute2, the drivers' registry ...). It is imported on
    # first use, so a process that needs one small part, such as the DNS resolver's server
    # (python -m cnm.dns.server), starts in a third of the time.
    if name == "Controller":
        return importlib.import_module("cnm.controller").Controller
    raise AttributeError(f"module 'cnm' has no attribute {name!r}")


# A library does not print: without this, a program that never configured logging would get
# cnm's warnings on stderr through logging's last-resort handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())
