"""What inspect() shows: the shapes of docker network inspect and docker inspect."""

from __future__ import annotations

import json
from collections.abc import Iterator

from cnm import IPAMConfig, PortBinding
from cnm.demo.harness import Demo, expect, scenario


@scenario("inspect", "the CNM objects as inspect() shows them: docker network inspect and docker inspect's shapes")
def _inspect(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("shown", ipam=IPAMConfig(subnet="10.89.12.0/24", gateway="10.89.12.1"))
    demo.defer(net.delete)
    sb = demo.ctl.create_sandbox("s1", network="shown", ports=[PortBinding(container_port=80, host_port=8090)])
    demo.defer(sb.delete)
    doc = net.inspect()
    expect(doc["IPAM"]["Config"] == [{"Subnet": "10.89.12.0/24", "Gateway": "10.89.12.1"}], f"IPAM is {doc['IPAM']}")
    expect(list(doc["Containers"]) == [sb.id], f"Containers is {doc['Containers']}")
    yield "network inspect shown: " + json.dumps({k: doc[k] for k in ("Name", "Driver", "Scope", "Internal", "IPAM")})
    yield "      Containers: " + json.dumps(doc["Containers"])
    settings = sb.inspect()["NetworkSettings"]
    expect(settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8090"}]}, f"Ports {settings['Ports']}")
    yield "sandbox inspect s1: NetworkSettings.Ports " + json.dumps(settings["Ports"])
    entry = settings["Networks"]["shown"]
    yield "      NetworkSettings.Networks.shown: " + json.dumps(
        {k: entry[k] for k in ("NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")}
    )
    yield "      the same as JSON from the command line: cnm network inspect shown --format json"
