"""Atomic writes (common.atomic): the target appears whole or not at all, an existing file or
directory survives a failed write, and what is written gets the usual permissions (the umask's),
not a temporary file's private ones."""
from __future__ import annotations

import os

import numpy as np
import pytest

from flexicodec.common.atomic import atomic_path, atomic_write_text
from flexicodec.data.audio import load_audio, write_audio


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_files_and_directories_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "d") as tmp:
            tmp.mkdir()
            (tmp / "f").write_text("y")
        wav = write_audio(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(wav) == 0o644
    assert _mode(tmp_path / "d") == 0o755 and _mode(tmp_path / "d" / "f") == 0o644
    assert load_audio(wav)[0].shape == (1600,)


def test_a_failed_write_keeps_what_was_there(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "old"
    write_audio(tmp_path / "a.wav", np.full(800, 0.5, np.float32), 16000)
    with pytest.raises(ValueError):
        write_audio(tmp_path / "a.wav", np.zeros(10, np.float32), 16000, subtype="NOPE")
    assert np.allclose(load_audio(tmp_path / "a.wav")[0], 0.5, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "a.wav"]   # no leftovers
