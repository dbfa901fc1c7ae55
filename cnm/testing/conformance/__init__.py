"""The conformance kit: run the driver contract against any network driver.

A driver author hands the kit a factory for their driver (the class itself
will do) and gets either a :class:`Report` or a :class:`ConformanceFailure`
listing every broken rule, what was seen, and how to fix it::

    from cnm.testing.conformance import check_driver

    def test_my_driver_conforms():
        check_driver(MyDriver, options={"parent": "eth0"})

or, with the pytest fixtures (``pytest_plugins = ["cnm.testing.fixtures"]``),
one test per rule so a failure names its rule::

    @pytest.mark.parametrize("rule", RULE_IDS)
    def test_contract(driver_conformance, rule):
        driver_conformance(MyDriver, rules=[rule])

Each rule runs in a world of its own: a throwaway host namespace (prepared by
the author's ``setup_host`` hook, e.g. to create a parent interface), a real
:class:`~cnm.controller.Controller` bound to it whose registry holds only the
driver under test, real sandboxes, and a real firewall (iptables by default, or nftables) behind a
wrapper that can fail on demand. The driver is wrapped too, so the kit sees
every verb and its arguments and can make a step fail after the driver did
its part. Nothing outside the namespaces the kit creates is touched.

The rules are listed in :data:`RULES`; ``docs/writing-a-driver.md`` explains
each one.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from cnm.errors import InvalidConfig
from cnm.kernel.netns import NetNS
from cnm.registry import DriverFactory
from cnm.testing import namespace_prefix
from cnm.testing.conformance.checks import CHECKS
from cnm.testing.conformance.rules import (
    RULE_IDS,
    RULES,
    ConformanceError,
    ConformanceFailure,
    InjectedFailure,
    Report,
    Rule,
    RuleResult,
)
from cnm.testing.conformance.world import Leftovers, SetupHost, World
from cnm.testing.hosts import throwaway_namespaces

if TYPE_CHECKING:
    from cnm.testing.conformance.pytest_plugin import driver_conformance

__all__ = [
    "RULES",
    "RULE_IDS",
    "ConformanceError",
    "ConformanceFailure",
    "InjectedFailure",
    "Report",
    "Rule",
    "RuleResult",
    "check_driver",
    "driver_conformance",
]

log = logging.getLogger(__name__)


def _own_namespaces() -> contextlib.AbstractContextManager[Callable[[str], NetNS]]:
    return throwaway_namespaces(namespace_prefix() + "k")


def check_driver(
    factory: DriverFactory,
    *,
    name: str | None = None,
    options: Mapping[str, object] | None = None,
    setup_host: SetupHost | None = None,
    leftovers: Leftovers | None = None,
    rules: Collection[str] | None = None,
    netns_factory: Callable[[str], NetNS] | None = None,
    firewall: str = "iptables",
) -> Report:
    """Check a driver against the contract, one fresh world per rule; raise if any rule breaks.

    Args:
        factory: builds the driver from a :class:`~cnm.driverapi.DriverContext`;
            the driver class itself will do.
        name: the name to register it under; its ``name`` attribute by default.
        options: the options every test network is created with.
        setup_host: called with each fresh host namespace before anything else,
            to create what the driver expects to find there (a parent
            interface, private daemons...). It may return options to add, e.g.
            the parent's name.
        leftovers: lists the driver's own state that the kit cannot see (OVSDB
            rows, files) still present for a host namespace; checked wherever
            the kit checks for leaked kernel objects.
        rules: the ids of the rules to check (see :data:`RULE_IDS`); all by default.
        netns_factory: makes the namespaces (the ``netns_factory`` fixture);
            by default the kit makes and removes its own.
        firewall: the firewall backend behind the kit's recording spy ("iptables" or "nftables").

    Returns:
        The report, when every rule passed.

    Raises:
        ConformanceFailure: one or more rules broke; it lists each, with the fix.
        InvalidConfig: an unknown rule id, or no name for the driver.
    """
    driver = name or getattr(factory, "name", None)
    if not isinstance(driver, str) or not driver:
        raise InvalidConfig("the driver has no name attribute; pass check_driver(..., name='mydriver')")
    selected = list(RULE_IDS if rules is None else rules)
    unknown = [r for r in selected if r not in RULES]
    if unknown:
        raise InvalidConfig(f"unknown conformance rule(s) {unknown}; known rules: {', '.join(RULE_IDS)}")
    results: list[RuleResult] = []
    failures: list[ConformanceError] = []
    with contextlib.ExitStack() as stack:
        make = netns_factory or stack.enter_context(_own_namespaces())
        for rule_id in selected:
            rule = RULES[rule_id]
            try:
                world = World(
                    driver=driver,
                    factory=factory,
                    options=dict(options or {}),
                    setup_host=setup_host,
                    leftovers=leftovers,
                    make_netns=make,
                    rule=rule,
                    firewall=firewall,
                )
            except Exception as exc:
                raise InvalidConfig(
                    f"the conformance kit could not set up its host namespace for {driver!r}: "
                    f"{type(exc).__name__}: {exc}; check setup_host"
                ) from exc
            try:
                note = CHECKS[rule_id](world)
            except ConformanceError as exc:
                failures.append(exc)
                results.append(RuleResult(rule_id, passed=False, note=exc.problem))
            except Exception as exc:  # noqa: BLE001 - any error of the driver breaks the rule under test
                error = ConformanceError(driver, rule, f"unexpected {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                failures.append(error)
                results.append(RuleResult(rule_id, passed=False, note=error.problem))
            else:
                results.append(RuleResult(rule_id, passed=True, note=note))
            finally:
                world.close()
    report = Report(driver, tuple(results))
    log.info("%s", report)
    if failures:
        raise ConformanceFailure(report, failures)
    return report


def __getattr__(name: str) -> Any:
    # The fixture needs pytest, which check_driver must not: load it only when asked for.
    if name == "driver_conformance":
        return importlib.import_module("cnm.testing.conformance.pytest_plugin").driver_conformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
