"""Atomic file and directory writes: a temporary beside the target, renamed into place, so an
interrupted write never leaves a half-written file; the report format of the evaluation
and diagnostic tools (``OUT.json`` + ``OUT.md``); reading the append-only JSON-lines logs
the trainers and the corpus builder keep. Imports nothing heavy (no torch): the corpus
builder's workers use it too."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and directories. On error the temporary is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent)) / "x"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_report_files(out_prefix: str | os.PathLike, result: dict, markdown: str
                       ) -> tuple[Path, Path]:
    """Write ``OUT_PREFIX.json`` (``result``) and ``OUT_PREFIX.md`` (``markdown``)
    atomically; returns their paths (the report format of the eval and diagnostic tools)."""
    out = Path(out_prefix)
    jpath, mpath = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    atomic_write_text(jpath, json.dumps(result, indent=1, ensure_ascii=False))
    atomic_write_text(mpath, markdown)
    return jpath, mpath


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read an append-only JSON-lines log (a trainer's :class:`JsonlLogger` metrics, the
    corpus builder's failed items); a line a kill tore is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
