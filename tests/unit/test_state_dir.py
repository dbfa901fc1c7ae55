"""A state_dir is made 0700, fixed to 0700 when others could write it, refused when it is a link or not ours."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cnm import errors
from cnm._core.state_dir import prepare_state_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    assert prepare_state_dir(str(made)) == str(made)
    assert _mode(made) == 0o700


def test_a_world_writable_state_dir_is_made_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    prepare_state_dir(str(loose))
    assert _mode(loose) == 0o700
    assert "made it 0700" in caplog.text


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(errors.InvalidConfig, match="is a symbolic link"):
        prepare_state_dir(str(tmp_path / "link"))


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.InvalidConfig, match="not a directory"):
        prepare_state_dir(str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(errors.InvalidConfig, match="owned by uid 65534"):
        prepare_state_dir(str(theirs))
