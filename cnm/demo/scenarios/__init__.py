"""The demo's scenarios, one module per chapter; importing this package registers them all.

A scenario runs in the order it is registered, so the chapters are imported
here in the order the demo tells them.
"""

# isort: off
from cnm.demo.scenarios import bridge
from cnm.demo.scenarios import ports
from cnm.demo.scenarios import isolation
from cnm.demo.scenarios import objects
from cnm.demo.scenarios import modes
from cnm.demo.scenarios import legacy_links
from cnm.demo.scenarios import names
from cnm.demo.scenarios import ovs
from cnm.demo.scenarios import mesh
from cnm.demo.scenarios import inspect
# isort: on

__all__ = ["bridge", "inspect", "isolation", "legacy_links", "mesh", "modes", "names", "objects", "ovs", "ports"]
