"""Unix domain sockets between sandboxes (docs/unix-sockets.md), with real processes.

A path-based socket is a file: any sandbox that sees the directory reaches it,
whatever its network namespace. An abstract-namespace socket has no file; it
belongs to the network namespace it was bound in, so only sandboxes sharing
that namespace (container mode) reach it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cnm import Controller
from cnm.handles import Sandbox
from cnm.testing.traffic import probe_unix, serve_unix

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A short directory under /tmp (socket paths are limited to 107 bytes), removed afterwards."""
    path = tempfile.mkdtemp(prefix="cnm-uds-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _serve(sandbox: Sandbox, name: str, processes: Track) -> None:
    processes(serve_unix(sandbox, name))


def _connect(sandbox: Sandbox, name: str) -> str | None:
    ok, answer = probe_unix(sandbox, name)
    return answer if ok else None


def _netns_id(sandbox: Sandbox) -> str:
    return f"net:[{os.stat(sandbox.netns_path).st_ino}]"


def test_path_socket_connects_sandboxes_in_separate_namespaces(
    controller: Controller, shared_dir: str, processes: Track
) -> None:
    a = controller.create_sandbox("a", network="none")
    b = controller.create_sandbox("b", network="none")
    assert _netns_id(a) != _netns_id(b)
    path = os.path.join(shared_dir, "foo.sock")
    _serve(a, path, processes)
    # The answer comes from a's process, in a's namespace, to a client in b's.
    assert _connect(b, path) == f"a {_netns_id(a)}"
    a.delete()
    b.delete()


def test_abstract_socket_is_per_network_namespace(controller: Controller, processes: Track) -> None:
    a = controller.create_sandbox("a", network="none")
    b = controller.create_sandbox("b", network="none")
    sharer = controller.create_sandbox("a-side", network="container:a")
    name = "@cnm-test-" + secrets.token_hex(4)
    _serve(a, name, processes)
    # Same namespace (container mode): found. Another namespace: not there at all.
    assert _connect(sharer, name) == f"a {_netns_id(a)}"
    assert _connect(a, name) == f"a {_netns_id(a)}"
    assert _connect(b, name) is None
    assert probe_unix(b, name) == (False, "ConnectionRefusedError")
    sharer.delete()
    a.delete()
    b.delete()
