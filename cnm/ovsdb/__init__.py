"""A thin typed client of the Open vSwitch database (OVSDB, RFC 7047), spoken directly.

cnm changes Open vSwitch only through this package: bridges, ports and
interfaces are rows of the ``Open_vSwitch`` database, written in one
``transact`` call each over the server's JSON-RPC socket (never through
``ovs-vsctl``). The protocol is small enough that no client library is
needed, which keeps every call bounded: each one opens its own connection,
and every read, write and wait has a deadline.

A change can wait until ovs-vswitchd has applied it (the ``next_cfg`` /
``cur_cfg`` handshake that ``ovs-vsctl`` uses), and then checks that every
interface it added opened. An unreachable ovsdb-server fails at once, a
stopped ovs-vswitchd after the timeout; both as :class:`cnm.errors.KernelError`
naming the socket and what to do. A server that goes away after a change was
committed is waited for, within the same timeout: the change is not reported
as failed while it stands. Nothing here ever blocks without a limit.

Rows made by cnm carry ``external_ids`` (``cnm-network``, ``cnm-endpoint``...)
so that cleanup finds exactly cnm's rows: see :meth:`Ovsdb.ports`.

The row types and their decoders are in :mod:`cnm.ovsdb.rows`, the socket
and its deadlines in ``cnm.ovsdb._jsonrpc``; everything a driver needs is
importable from here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from cnm.errors import AlreadyExists, CNMError, InvalidConfig, KernelError, NotFound
from cnm.ovsdb._jsonrpc import Connection, Json, OpError, ServerError, parse_remote
from cnm.ovsdb.rows import Bridge, Interface, Port, PortSpec, decode_bridge, decode_interface, decode_port, to_map

__all__ = [
    "DATABASE",
    "DEFAULT_REMOTE",
    "DEFAULT_TIMEOUT",
    "Bridge",
    "Interface",
    "Ovsdb",
    "Port",
    "PortSpec",
    "parse_remote",
]

log = logging.getLogger(__name__)

DATABASE = "Open_vSwitch"
DEFAULT_REMOTE = "unix:/var/run/openvswitch/db.sock"
"""Where Debian's and most distributions' ovsdb-server listens."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a call (connection, transaction, wait for ovs-vswitchd) may take at most."""

_WAIT_MARGIN_MS = 100  # the server's wait for ovs-vswitchd ends this long before the socket's deadline
_RECONNECT = 0.05  # seconds between connection attempts after ovsdb-server went away mid-change


class Ovsdb:
    """A client of one ovsdb-server's ``Open_vSwitch`` database.

    Holds no connection between calls: each call connects, does its work
    within ``timeout`` seconds and disconnects, so an instance is cheap and
    safe to share between threads.

    Args:
        remote: ``unix:/PATH`` or ``tcp:HOST:PORT``; Debian's default socket if omitted.
        timeout: seconds each call may take, waiting for ovs-vswitchd included.
    """

    def __init__(self, remote: str = DEFAULT_REMOTE, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parse_remote(remote)
        if timeout <= 0:
            raise InvalidConfig(f"OVSDB timeout {timeout!r} must be positive")
        self.remote = remote
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Ovsdb({self.remote!r}, timeout={self.timeout})"

    # --- plumbing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str, *, missing: str = "a row it needs does not exist") -> Iterator[None]:
        """The one place where socket, protocol and transaction failures become cnm errors."""
        try:
            yield
        except CNMError:
            raise
        except TimeoutError as exc:
            raise KernelError(
                f"{what} through {self.remote} timed out after {self.timeout:g}s; "
                "check that ovsdb-server and ovs-vswitchd are running",
                errno.ETIMEDOUT,
            ) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise KernelError(
                f"{what} failed: no ovsdb-server answers at {self.remote}; start ovsdb-server "
                "(systemctl start openvswitch-switch) or point the ovsdb option at its socket",
                exc.errno,
            ) from exc
        except OSError as exc:
            raise KernelError(f"{what} through {self.remote} failed: {exc.strerror or exc}", exc.errno) from exc
        except (ServerError, ValueError) as exc:
            raise KernelError(f"{what} through {self.remote} failed: {exc}", errno.EPROTO) from exc
        except OpError as exc:
            if exc.error == "timed out" and exc.op == "wait":
                raise NotFound(f"{what} failed: {missing}") from exc
            if exc.error == "constraint violation" and "identical values" in exc.details:
                raise AlreadyExists(f"{what} failed: the name is taken in OVSDB ({exc.details})") from exc
            raise KernelError(f"{what} failed: OVSDB refused it: {exc}", errno.EPROTO) from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        conn = Connection(self.remote, time.monotonic() + self.timeout)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _transact(conn: Connection, ops: Sequence[Mapping[str, Json]]) -> list[Json]:
        result = conn.call("transact", [DATABASE, *ops])
        if not isinstance(result, list):
            raise ServerError(f"unexpected transact reply {result!r}")
        for op, outcome in zip([*ops, {}], result, strict=False):
            if isinstance(outcome, dict) and outcome.get("error"):
                detail = str(outcome.get("details", ""))
                if op:
                    detail = f"{detail} (in {op.get('op')} {op.get('table', '')})".strip()
                raise OpError(str(outcome["error"]), detail, str(op.get("op", "commit")))
        return result

    def _select(self, conn: Connection, table: str, where: list[Json] | None = None) -> list[dict[str, Json]]:
        result = self._transact(conn, [{"op": "select", "table": table, "where": where or []}])
        rows: list[dict[str, Json]] = result[0]["rows"]
        return rows

    def _change(
        self,
        what: str,
        ops: list[Mapping[str, Json]],
        *,
        wait: bool,
        check: Sequence[str] = (),
        missing: str = "a row it needs does not exist",
    ) -> None:
        """Commit ``ops`` in one transaction; with ``wait``, until ovs-vswitchd applied them.

        ``check`` names interfaces that must have opened once applied;
        ``missing`` explains a failed ``wait`` operation (a precondition).
        """
        with self._errors(what, missing=missing), self._connect() as conn:
            if wait:
                ops = [
                    *ops,
                    {"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]},
                    {"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg", "cur_cfg"]},
                ]
            result = self._transact(conn, ops)
            if not wait:
                return
            rows = result[len(ops) - 1]["rows"]
            if not rows:
                raise KernelError(
                    f"{what} failed: the Open_vSwitch table has no row; initialise the database (ovs-vsctl init)",
                    errno.ENOENT,
                )
            self._applied(conn, what, int(rows[0]["next_cfg"]), int(rows[0]["cur_cfg"]), check)

    def _applied(self, conn: Connection, what: str, target: int, seen: int, check: Sequence[str]) -> None:
        """Wait for ovs-vswitchd and check ``check``'s interfaces, across a restart of ovsdb-server.

        The change is committed by now: a lost connection says nothing about
        it, so the wait goes on through a new one (same deadline) instead of
        reporting a failure that a retry would meet as AlreadyExists.
        """
        current = conn
        try:
            while True:
                try:
                    self._wait_applied(current, what, target, seen)
                    if check:
                        self._check_interfaces(current, what, check)
                    return
                except ConnectionError as exc:
                    log.warning("%s: lost ovsdb-server at %s after the commit (%s); waiting on", what, self.remote, exc)
                    current.close()
                    current = self._reconnect(conn.deadline)
                    seen = -1  # unknown: the first wait returns at once with cur_cfg as it is now
        finally:
            current.close()

    def _reconnect(self, deadline: float) -> Connection:
        while True:
            try:
                return Connection(self.remote, deadline)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() + _RECONNECT > deadline:
                    raise
                time.sleep(_RECONNECT)

    def _wait_applied(self, conn: Connection, what: str, target: int, seen: int) -> None:
        """Return once ovs-vswitchd's ``cur_cfg`` (``seen`` now) reaches ``target``.

        ovsdb-server itself holds each ``wait`` operation until ``cur_cfg``
        changes, so the answer comes as soon as ovs-vswitchd commits, with no
        polling; the operation's own timeout ends just before the socket's.
        """
        while seen < target:
            left_ms = int((conn.deadline - time.monotonic()) * 1000) - _WAIT_MARGIN_MS
            try:
                result = self._transact(
                    conn,
                    [
                        {"op": "wait", "timeout": max(left_ms, 0), "table": "Open_vSwitch", "where": [],
                         "columns": ["cur_cfg"], "until": "!=", "rows": [{"cur_cfg": seen}]},
                        {"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]},
                    ],
                )  # fmt: skip
            except OpError as exc:
                if exc.error != "timed out":
                    raise
                raise KernelError(
                    f"{what}: ovs-vswitchd did not apply the change within {self.timeout:g}s "
                    f"(database {self.remote}); check that ovs-vswitchd is running and connected to it",
                    errno.ETIMEDOUT,
                ) from exc
            rows = result[1]["rows"]
            if not rows:
                raise KernelError(f"{what}: the Open_vSwitch row is gone from {self.remote}", errno.ENOENT)
            seen = int(rows[0]["cur_cfg"])

    def _check_interfaces(self, conn: Connection, what: str, names: Sequence[str]) -> None:
        for row in self._select(conn, "Interface"):
            iface = decode_interface(row)
            if iface.name in names and (iface.error or iface.ofport == -1):
                raise KernelError(
                    f"{what}: ovs-vswitchd could not open interface {iface.name}: {iface.error or 'unknown error'}",
                    errno.ENODEV,
                )

    # --- reads ----------------------------------------------------------------------------
    def _read(self, what: str, table: str, where: list[Json] | None = None) -> list[dict[str, Json]]:
        with self._errors(what), self._connect() as conn:
            return self._select(conn, table, where)

    def bridges(self) -> list[Bridge]:
        """Every bridge."""
        return [decode_bridge(row) for row in self._read("list OVS bridges", "Bridge")]

    def ports(self) -> list[Port]:
        """Every port (cnm's carry ``external_ids`` naming their network or endpoint)."""
        return [decode_port(row) for row in self._read("list OVS ports", "Port")]

    def interfaces(self) -> list[Interface]:
        """Every interface."""
        return [decode_interface(row) for row in self._read("list OVS interfaces", "Interface")]

    def bridge(self, name: str) -> Bridge | None:
        """The bridge called ``name``, or None."""
        rows = self._read(f"look up OVS bridge {name}", "Bridge", [["name", "==", name]])
        return decode_bridge(rows[0]) if rows else None

    def port(self, name: str) -> Port | None:
        """The port called ``name``, or None."""
        rows = self._read(f"look up OVS port {name}", "Port", [["name", "==", name]])
        return decode_port(rows[0]) if rows else None

    def status(self) -> dict[str, Json]:
        """The Open_vSwitch row (``ovs_version``, ``datapath_types``, ``cur_cfg``...), or {} before init."""
        rows = self._read("read the Open_vSwitch row", "Open_vSwitch")
        return rows[0] if rows else {}

    # --- writes ---------------------------------------------------------------------------
    def sync(self) -> None:
        """Return once ovs-vswitchd has applied everything committed so far.

        Raises:
            KernelError: ovsdb-server unreachable, or ovs-vswitchd not caught up within the timeout.
        """
        self._change("synchronise with ovs-vswitchd", [], wait=True)

    def initialise(self) -> None:
        """Create the Open_vSwitch root row if the database has none (what ``ovs-vsctl init`` does)."""
        with self._errors("initialise the Open_vSwitch database"), self._connect() as conn:
            if self._select(conn, "Open_vSwitch"):
                return
            # The wait makes two racing initialisers create one row, not fail on maxRows.
            self._transact(
                conn,
                [
                    {"op": "wait", "timeout": 0, "table": "Open_vSwitch", "where": [], "columns": ["_uuid"],
                     "until": "==", "rows": []},
                    {"op": "insert", "table": "Open_vSwitch", "row": {}},
                ],
            )  # fmt: skip

    def add_bridge(
        self,
        name: str,
        *,
        datapath_type: str = "",
        mtu: int | None = None,
        external_ids: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """Create bridge ``name`` with its LOCAL (internal) port, atomically.

        With ``wait``, returns once ovs-vswitchd made the bridge, so its LOCAL
        port exists as a netdev in ovs-vswitchd's namespace; if it does not
        happen in time the rows are taken out again.

        Args:
            name: the bridge, its LOCAL port and that port's netdev.
            datapath_type: ``netdev`` for the userspace datapath; empty for the kernel one.
            mtu: the MTU asked for the LOCAL port, or None for OVS's choice.
            external_ids: set on the bridge, port and interface rows.
            wait: wait for ovs-vswitchd.

        Raises:
            AlreadyExists: a bridge, port or interface of that name exists.
            KernelError: ovsdb-server unreachable, or ovs-vswitchd did not apply it in time.
        """
        ids = to_map(external_ids or {})
        iface: dict[str, Json] = {"name": name, "type": "internal", "external_ids": ids}
        if mtu is not None:
            iface["mtu_request"] = mtu
        ops: list[Mapping[str, Json]] = [
            {"op": "insert", "table": "Interface", "uuid-name": "iface", "row": iface},
            {"op": "insert", "table": "Port", "uuid-name": "port",
             "row": {"name": name, "interfaces": ["named-uuid", "iface"], "external_ids": ids}},
            {"op": "insert", "table": "Bridge", "uuid-name": "bridge",
             "row": {"name": name, "ports": ["named-uuid", "port"], "datapath_type": datapath_type,
                     "external_ids": ids}},
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]]},
        ]  # fmt: skip
        try:
            self._change(f"create OVS bridge {name}", ops, wait=wait, check=[name])
        except KernelError:
            self._take_back(lambda: self.delete_bridge(name, wait=False))
            raise
        log.debug("created OVS bridge %s (datapath %s) at %s", name, datapath_type or "system", self.remote)

    def delete_bridge(self, name: str, *, wait: bool = True) -> bool:
        """Delete bridge ``name`` and its ports; succeed if it is gone. True if deleted."""
        found = self.bridge(name)
        if found is None:
            return False
        ops: list[Mapping[str, Json]] = [
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["bridges", "delete", ["set", [["uuid", found.uuid]]]]]},
        ]  # fmt: skip
        self._change(f"delete OVS bridge {name}", ops, wait=wait)
        log.debug("deleted OVS bridge %s at %s", name, self.remote)
        return True

    def add_ports(self, bridge: str, ports: Sequence[PortSpec], *, wait: bool = True) -> None:
        """Add ``ports`` (each a Port with one Interface) to ``bridge`` in one transaction.

        With ``wait``, returns once ovs-vswitchd opened every interface; if it
        could not (a netdev that does not exist, say) or did not answer in
        time, the ports are taken out again before the error is raised.

        Raises:
            NotFound: no bridge ``bridge``.
            AlreadyExists: a port or interface of one of the names exists.
            KernelError: ovsdb-server unreachable, ovs-vswitchd did not apply it in
                time, or could not open an interface.
        """
        if not ports:
            return
        ops: list[Mapping[str, Json]] = []
        for n, port in enumerate(ports):
            ids = to_map(port.external_ids)
            iface: dict[str, Json] = {
                "name": port.name, "type": port.type, "options": to_map(port.options), "external_ids": ids,
            }  # fmt: skip
            if port.mtu is not None:
                iface["mtu_request"] = port.mtu
            row: dict[str, Json] = {"name": port.name, "interfaces": ["named-uuid", f"i{n}"], "external_ids": ids}
            if port.tag is not None:
                row["tag"] = port.tag
            if port.protected:
                row["protected"] = True
            ops += [
                {"op": "insert", "table": "Interface", "uuid-name": f"i{n}", "row": iface},
                {"op": "insert", "table": "Port", "uuid-name": f"p{n}", "row": row},
            ]
        ops += [
            {"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
             "mutations": [["ports", "insert", ["set", [["named-uuid", f"p{n}"] for n in range(len(ports))]]]]},
            # Fails the transaction unless the bridge exists (mutate alone would touch 0 rows silently).
            {"op": "wait", "timeout": 0, "table": "Bridge", "where": [["name", "==", bridge]],
             "columns": ["name"], "until": "==", "rows": [{"name": bridge}]},
        ]  # fmt: skip
        names = [p.name for p in ports]
        try:
            self._change(
                f"add OVS port(s) {', '.join(names)} to bridge {bridge}",
                ops,
                wait=wait,
                check=names,
                missing=f"no OVS bridge {bridge}; create it (its network) first",
            )
        except KernelError:
            self._take_back(lambda: [self.delete_port(name, wait=False) for name in names])
            raise
        log.debug("added OVS port(s) %s to %s at %s", ", ".join(names), bridge, self.remote)

    def add_port(self, bridge: str, port: PortSpec, *, wait: bool = True) -> None:
        """Add one port; see :meth:`add_ports`."""
        self.add_ports(bridge, [port], wait=wait)

    @staticmethod
    def _take_back(undo: Callable[[], object]) -> None:
        # The change may or may not have been committed; an error here would
        # hide the one being raised, which says more.
        try:
            undo()
        except CNMError as exc:
            log.warning("could not take back a failed OVSDB change: %s", exc)

    def delete_port(self, name: str, *, wait: bool = True) -> bool:
        """Remove port ``name`` from its bridge; succeed if it is gone. True if removed."""
        found = self.port(name)
        if found is None:
            return False
        ops: list[Mapping[str, Json]] = [
            # Port and Interface are not root tables: dropping the reference deletes both rows.
            {"op": "mutate", "table": "Bridge", "where": [["ports", "includes", ["uuid", found.uuid]]],
             "mutations": [["ports", "delete", ["set", [["uuid", found.uuid]]]]]},
        ]  # fmt: skip
        self._change(f"delete OVS port {name}", ops, wait=wait)
        log.debug("deleted OVS port %s at %s", name, self.remote)
        return True
