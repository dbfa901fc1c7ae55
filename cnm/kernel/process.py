"""Processes inside a namespace: the command line that starts one there.

A process started through :func:`command_in` runs in the given network
namespace, and, when asked, in a private mount and UTS namespace where
``/etc/hosts`` and ``/etc/resolv.conf`` are the sandbox's own files and the
hostname is the sandbox's, as in a Docker container. The caller's own
namespaces are never touched: the switching happens in the new process,
through util-linux's ``unshare`` and ``nsenter``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cnm.kernel.netns import NetNS

__all__ = ["command_in"]

# $1 = hostname or "", $2 = netns path or "", then pairs "source target" until "--", then argv.
_ENTER = r"""
set -e
host=$1; ns=$2; shift 2
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
if [ -n "$host" ]; then hostname "$host"; fi
if [ -n "$ns" ]; then exec nsenter --net="$ns" -- "$@"; fi
exec "$@"
"""


def command_in(
    netns: NetNS,
    argv: Sequence[str],
    *,
    files: Mapping[str, str] | None = None,
    hostname: str | None = None,
) -> list[str]:
    """The argv that runs ``argv`` inside ``netns``.

    Args:
        netns: the network namespace to run in.
        argv: the program and its arguments.
        files: ``{target: source}`` files bind-mounted over ``target`` (e.g.
            ``/etc/hosts``) in a private mount namespace of the process.
        hostname: the hostname the process sees (a private UTS namespace).
    """
    if not argv:
        raise ValueError("argv is empty; give the program to run")
    ns_path = "" if netns.is_current else netns.path
    if not files and hostname is None:
        return ["nsenter", f"--net={ns_path}", "--", *argv] if ns_path else list(argv)
    pairs: list[str] = []
    for target, source in (files or {}).items():
        pairs += [source, target]
    flags = ["--mount", "--propagation", "private"]
    if hostname is not None:
        flags.append("--uts")
    return ["unshare", *flags, "--", "sh", "-c", _ENTER, "cnm-enter", hostname or "", ns_path, *pairs, "--", *argv]
