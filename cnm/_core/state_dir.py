"""A controller's state_dir: made private, or refused when someone else could change what it holds.

The state_dir holds the store (every network, endpoint and port), the
namespaces' mount points and the sandboxes' hosts and resolv.conf files. If
another user could replace an entry in it, that user could make cnm mount,
write or remove files elsewhere. So it is made with mode 0700, and an existing
one is checked: a symbolic link (whoever can write its parent could point it
elsewhere) or a directory owned by another user is refused; a group- or
world-writable one of ours is made 0700, with a warning (docs/security.md).
"""

from __future__ import annotations

import logging
import os
import stat

from cnm.errors import InvalidConfig

__all__ = ["prepare_state_dir"]

log = logging.getLogger(__name__)


def prepare_state_dir(path: str) -> str:
    """Create ``path`` (mode 0700) or check it; return its absolute path.

    Raises:
        InvalidConfig: ``path`` is a symbolic link, not a directory, or owned by another user.
    """
    path = os.path.abspath(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise InvalidConfig(
            f"state_dir {path} is a symbolic link (to {os.readlink(path)}); give the directory itself, "
            "so that nobody who can write its parent can point it elsewhere"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidConfig(f"state_dir {path} exists and is not a directory; give a directory")
    if info.st_uid != os.geteuid():
        raise InvalidConfig(
            f"state_dir {path} is owned by uid {info.st_uid}, not by this process (uid {os.geteuid()}); "
            "give a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("state_dir %s was writable by others (mode %o); made it 0700", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, 0o700)
    return path
