#!/usr/bin/env python3
"""Make the ``flexicodec`` package importable from a checkout without installing it.

    python3 scripts/package_links.py DIR && export PYTHONPATH=DIR

Reads ``[tool.setuptools.package-dir]`` of the checkout's ``pyproject.toml`` and builds
``DIR/flexicodec/`` out of symbolic links to the checkout's folders (``codec/`` as
``flexicodec/codec``, ...), so ``python -m flexicodec.codec.train`` runs the checkout's code
exactly as an editable install would. For machines where ``pip install -e .`` is not wanted
(a batch node, a container without setuptools); DIR is replaced each time.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """``{"flexicodec": ROOT/flexicodec_top, "flexicodec.codec": ROOT/codec, ...}``."""
    conf = tomllib.loads(pyproject.read_text())
    try:
        mapping = conf["tool"]["setuptools"]["package-dir"]
    except KeyError as exc:
        raise SystemExit(f"{pyproject}: no [tool.setuptools.package-dir]") from exc
    return {name: pyproject.parent / folder for name, folder in mapping.items()}


def build(out: Path, pyproject: Path = ROOT / "pyproject.toml") -> Path:
    """Create ``out/<top>/`` with one link per mapped folder; returns the package dir."""
    dirs = package_dirs(pyproject)
    tops = [n for n in dirs if "." not in n]
    if len(tops) != 1:
        raise SystemExit(f"{pyproject}: expected one top-level package, got {tops}")
    top = tops[0]
    if out.exists():
        shutil.rmtree(out)
    pkg = out / top
    pkg.mkdir(parents=True)
    for f in dirs[top].iterdir():          # the top package's own files (its __init__.py)
        if f.is_file():
            (pkg / f.name).symlink_to(f.resolve())
    for name, folder in dirs.items():
        if name == top:
            continue
        parts = name.split(".")
        if parts[0] != top or len(parts) != 2:
            raise SystemExit(f"{pyproject}: unsupported package-dir entry {name!r}")
        if not (folder / "__init__.py").is_file():
            raise SystemExit(f"{folder}: not a package folder (no __init__.py)")
        (pkg / parts[1]).symlink_to(folder.resolve(), target_is_directory=True)
    return pkg


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(build(Path(args[0]).resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
