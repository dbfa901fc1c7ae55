"""The driver contract's rules, and what the kit reports about them.

:data:`RULES` is the catalogue (each rule with the text of its fix);
:class:`Report` and :class:`ConformanceFailure` are what
:func:`~cnm.testing.conformance.check_driver` hands back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from cnm.errors import KernelError

__all__ = [
    "RULES",
    "RULE_IDS",
    "ConformanceError",
    "ConformanceFailure",
    "InjectedFailure",
    "Report",
    "Rule",
    "RuleResult",
]


@attrs.frozen
class Rule:
    """One rule of the driver contract.

    Attributes:
        id: a short stable name, used in messages and in ``check_driver(rules=...)``.
        title: the rule in one sentence.
        fix: what a driver does to keep it.
    """

    id: str
    title: str
    fix: str


RULES: Mapping[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule(
            "validate-options",
            "validate_network refuses unknown options with InvalidConfig before anything is created",
            "parse the options into your own attrs class in validate_network and raise cnm.errors.InvalidConfig "
            "naming the unknown option and the known ones; create nothing there",
        ),
        Rule(
            "network-lifecycle",
            "create_network then delete_network leave the host namespace as it was, and may be done again",
            "make delete_network remove every host object create_network made (links, addresses, routes, "
            "firewall rules through context.firewall.teardown_network), and keep no state that outlives it",
        ),
        Rule(
            "endpoint-lifecycle",
            "create_endpoint then delete_endpoint leave the host namespace as it was",
            "make delete_endpoint remove whatever create_endpoint made; create kernel objects for a sandbox "
            "in join, not in create_endpoint",
        ),
        Rule(
            "join-leave",
            "join makes what the sandbox needs; leave removes everything join made, in the host and the sandbox",
            "make leave delete every link join created (deleting the host end of a veth removes both ends); "
            "find them by names derived from the endpoint id, not by state kept in memory",
        ),
        Rule(
            "repeat-delete",
            "delete_network, delete_endpoint and leave succeed when repeated or when the object is already gone",
            "treat 'not found' as success in every delete and in leave (cnm.kernel.links.delete_link returns "
            "False instead of raising); never assume the object, or the sandbox namespace, still exists",
        ),
        Rule(
            "joined-elsewhere",
            "an endpoint joined to one sandbox is refused by another (EndpointJoined) and stays intact",
            "keep per-endpoint kernel objects keyed by the endpoint id so a refused join cannot disturb them; "
            "if the driver's join was called at all, report it as a cnm bug",
        ),
        Rule(
            "rollback-create-network",
            "a create_network that fails midway (the kit fails the firewall) raises and leaves nothing behind",
            "write create_network's steps with cnm.steps.Steps so a failure undoes the ones already done, "
            "and let the firewall's error propagate",
        ),
        Rule(
            "rollback-join",
            "a join that fails midway, in the driver or after it, raises and leaves nothing behind",
            "undo the steps join already did before re-raising (e.g. delete the host link you made when "
            "creating the sandbox interface fails), and make leave undo a join that completed",
        ),
        Rule(
            "interface-naming",
            "the driver names the sandbox interface exactly as asked (eth0, eth1, ... in join order) and reports it",
            "create the interface inside the sandbox with the ifname join receives (born there, or moved and "
            "renamed) and return it as JoinResult(interface=ifname); return interface=None only if you made none",
        ),
        Rule(
            "default-route",
            "the first joined network that reports a gateway gives the sandbox's default route",
            "return JoinResult(gateway=...) for networks that are not internal and add no default route "
            "yourself: the controller points it at the first joined endpoint that offers one",
        ),
        Rule(
            "connectivity",
            "two sandboxes on one network exchange real packets (ICMP and TCP), without NAT between them",
            "put the interfaces of one network on one L2 segment (the same bridge or parent), bring the host "
            "side up, and check the MTU; the controller adds the endpoint's address and brings ifname up",
        ),
        Rule(
            "no-leaks",
            "nothing the driver made stays in the host namespace or the firewall once everything is deleted; "
            "an interface left to a closing sandbox's namespace is down until the namespace goes",
            "remove every link, address, route and firewall rule you create in delete_network, delete_endpoint "
            "or leave (when SandboxInfo.closing, an interface whose other end is inside may instead be set "
            "down and left to the kernel); name them with a prefix and the object id so they can always be found",
        ),
    )
}
"""Every rule of the driver contract, by id."""

RULE_IDS: tuple[str, ...] = tuple(RULES)
"""The rule ids in the order the kit checks them (handy for ``pytest.mark.parametrize``)."""


class ConformanceError(AssertionError):
    """One rule broken: says which, what the kit saw, and how to fix it.

    Attributes:
        driver: the driver's name.
        rule: the broken rule.
        problem: what the kit saw.
    """

    def __init__(self, driver: str, rule: Rule, problem: str) -> None:
        self.driver = driver
        self.rule = rule
        self.problem = problem
        super().__init__(
            f"driver {driver!r} breaks rule {rule.id!r} ({rule.title}): {problem}\n    how to fix: {rule.fix}"
        )


class ConformanceFailure(AssertionError):
    """The driver broke one or more rules; ``str()`` lists each.

    Attributes:
        report: every rule's result.
        failures: one :class:`ConformanceError` per rule that failed.
    """

    def __init__(self, report: Report, failures: Sequence[ConformanceError]) -> None:
        self.report = report
        self.failures = tuple(failures)
        listed = "\n".join(f"- {failure}" for failure in self.failures)
        super().__init__(f"driver {report.driver!r} failed {len(self.failures)} conformance rule(s):\n{listed}")

    def broken_rules(self) -> list[str]:
        """The ids of the rules that failed."""
        return [failure.rule.id for failure in self.failures]


class InjectedFailure(KernelError):
    """A failure the kit makes on purpose, to check that a caller undoes its steps."""


@attrs.frozen
class RuleResult:
    """The outcome of one rule: passed, or failed with the error; ``note`` says what was checked."""

    rule: str
    passed: bool
    note: str = ""


@attrs.frozen
class Report:
    """What :func:`check_driver` found, rule by rule."""

    driver: str
    results: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        """True if every rule passed."""
        return all(r.passed for r in self.results)

    def __str__(self) -> str:
        lines = [f"conformance of driver {self.driver!r}:"]
        lines += [f"  {'ok  ' if r.passed else 'FAIL'} {r.rule}: {r.note}" for r in self.results]
        return "\n".join(lines)
