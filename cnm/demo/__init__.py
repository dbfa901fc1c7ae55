"""The demo: cnm's scenarios with real packets, in throwaway namespaces (``python -m cnm.demo``).

It makes its own "host" namespace and an "outside" namespace linked to it
(both under /run/netns, named ``cnmdemo-<random>-h`` and ``-o``), gives a
Controller a temporary state_dir and that host namespace, and runs each
scenario of :data:`SCENARIOS` against them. Every step prints what it shows
and its evidence: the ping line, the address a server saw, the rule from
``iptables-legacy-save`` in the host namespace. It ends with a table of
results, exits 1 if any scenario failed, and removes everything it made
(namespaces, sandbox mounts, processes, the state_dir) on success, on
failure, and on Ctrl-C or SIGTERM. The machine's own network is never touched.

A scenario is a function registered with :func:`scenario`; it gets a
:class:`Demo`, uses only cnm's public API and :mod:`cnm.testing.traffic`, and
returns (or yields) evidence lines. A check that does not hold raises
:class:`ScenarioFailed`. Only features that exist get a scenario: there is no
placeholder that passes without showing anything.

The harness is :mod:`cnm.demo.harness`; the scenarios live in
:mod:`cnm.demo.scenarios`, one module per chapter, imported there in the
order they run.
"""

from cnm.demo import scenarios
from cnm.demo.harness import SCENARIOS, Demo, Namespace, Scenario, ScenarioFailed, main, scenario

__all__ = ["SCENARIOS", "Demo", "Namespace", "Scenario", "ScenarioFailed", "main", "scenario", "scenarios"]
