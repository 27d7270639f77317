"""scripts/package_links.py: the flexicodec package importable from a checkout by links."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import package_links  # noqa: E402


def test_links_follow_pyproject_and_import(tmp_path):
    pkg = package_links.build(tmp_path / "path")
    dirs = package_links.package_dirs(ROOT / "pyproject.toml")
    assert pkg == tmp_path / "path" / "flexicodec"
    for name, folder in dirs.items():
        if name != "flexicodec":
            link = pkg / name.split(".")[1]
            assert link.is_symlink() and link.resolve() == folder.resolve()
    assert (pkg / "__init__.py").resolve() == (dirs["flexicodec"] / "__init__.py").resolve()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "path")}
    out = subprocess.run([sys.executable, "-c", "import flexicodec.codec.merging as m, "
                          "flexicodec.common.models as c; print(m.__file__); "
                          "print(c.CHECKOUT_MODELS)"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(pkg / "codec" / "merging.py")          # through the links
    assert out[1] == str(ROOT / "flexicodec_pretrained")        # resolved to the checkout
    package_links.build(tmp_path / "path")                      # rebuilt in place


def test_bad_pyproject_is_refused(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[project]\nname = 'x'\n")
    with pytest.raises(SystemExit, match="package-dir"):
        package_links.build(tmp_path / "p", bad)
    bad.write_text('[tool.setuptools.package-dir]\n"x" = "top"\n"x.sub" = "nofolder"\n')
    (tmp_path / "top").mkdir()
    with pytest.raises(SystemExit, match="not a package folder"):
        package_links.build(tmp_path / "p", bad)
