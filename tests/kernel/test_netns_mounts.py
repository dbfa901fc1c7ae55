"""Namespace mounts survive iproute2's set-up of their directory (issue 13, part 1).

Each test runs its script in a private mount namespace (``unshare -m
--propagation private``) with a temporary directory as the namespace
directory, so nothing depends on whether the machine's /run/netns is already
a mount point, and no mount made here reaches the machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

# What the first ``ip netns add`` does to its directory (iproute2's netns_add):
# make it shared, and when it is no mount point, bind it onto itself first.
IPROUTE2_SETUP = textwrap.dedent(
    """
    import ctypes, ctypes.util, errno, os
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20

    def iproute2_setup(directory, force=False):
        d = directory.encode()
        if not force and _libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None) == 0:
            return
        assert force or ctypes.get_errno() == errno.EINVAL
        assert _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) == 0, os.strerror(ctypes.get_errno())
        assert _libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None) == 0

    def nsfs_under(directory):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if " - nsfs " in line]
        return [p for p in points if p.startswith(directory + "/")]
    """
)


def _run_private(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", IPROUTE2_SETUP + script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_namespace_made_in_a_plain_directory_is_removable_after_iproute2_sets_it_up(tmp_path: Path) -> None:
    result = _run_private(
        textwrap.dedent(
            """
            import sys
            from cnm.kernel import netns, netns_dirs
            d = sys.argv[1]
            a = netns.create(os.path.join(d, "a"))
            iproute2_setup(d)
            assert netns.NetNS(a.path).exists()
            netns.remove(a.path)
            assert not os.path.exists(a.path), os.listdir(d)
            assert nsfs_under(d) == [], nsfs_under(d)
            # The directory is one shared mount of itself, made once however often it is used.
            b = netns.create(os.path.join(d, "b"))
            netns_dirs.prepare_directory(d)
            with open("/proc/self/mountinfo") as f:
                at = [line for line in f if line.split()[4] == d]
            assert len(at) == 1 and "shared:" in at[0], at
            netns.remove(b.path)
            print("ok")
            """
        ),
        str(tmp_path / "netns"),
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_concurrent_processes_mount_the_directory_once(tmp_path: Path) -> None:
    result = _run_private(
        textwrap.dedent(
            """
            import sys
            from multiprocessing import get_context
            from cnm.kernel import netns
            d = sys.argv[1]

            def make(i):
                netns.remove(netns.create(os.path.join(d, f"n{i}")).path)

            with get_context("fork").Pool(4) as pool:
                pool.map(make, range(8))
            with open("/proc/self/mountinfo") as f:
                at = [line for line in f if line.split()[4] == d]
            assert len(at) == 1, at
            assert os.listdir(d) == [] and nsfs_under(d) == []
            print("ok")
            """
        ),
        str(tmp_path / "netns"),
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_reconcile_brings_back_shadowed_namespaces_and_removes_orphans(tmp_path: Path) -> None:
    result = _run_private(
        textwrap.dedent(
            """
            import subprocess, sys
            from cnm import Controller
            from cnm.kernel import netns
            d = sys.argv[1]
            host = netns.create(os.path.join(d, "host"))
            nsdir = os.path.join(d, "state", "netns")
            # What a crash or an older cnm left: a namespace mounted in the plain
            # directory, then hidden by iproute2's set-up of that directory.
            os.makedirs(nsdir)
            orphan = os.path.join(nsdir, "orphan")
            open(orphan, "w").close()
            subprocess.run(["unshare", "--net=" + orphan, "true"], check=True)
            iproute2_setup(nsdir)
            with Controller(state_dir=os.path.join(d, "state"), host_netns=host, reconcile=False) as ctl:
                sb = ctl.create_sandbox("a")
                # A second self-mount stacked on top hides the live sandbox's namespace too.
                iproute2_setup(nsdir, force=True)
                report = ctl.reconcile()
                text = str(report)
                assert not report.errors, text
                assert "stacked mount" in text and "brought back namespace " + orphan in text, text
                assert "removed orphaned " + orphan in text, text
                assert "marked dead" not in text, text
                assert ctl.sandbox("a").netns.exists()
                assert not ctl.reconcile(), str(ctl.reconcile())
                sb.delete()
            assert os.listdir(nsdir) == [], os.listdir(nsdir)
            assert nsfs_under(nsdir) == [], nsfs_under(nsdir)
            netns.remove(host.path)
            print("ok")
            """
        ),
        str(tmp_path),
    )
    assert result.stdout.strip() == "ok", result.stderr
