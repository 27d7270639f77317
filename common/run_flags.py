"""The command-line flags every trainer shares, declared once.

Every trainer (``flexicodec asr-train``, ``flexicodec train``, ``flexicodec-lm train``,
``flexicodec-lm finetune``, ``flexicodec-tts train-acoustic``) keeps its resumable state in
``--run-dir`` and writes its final model to ``--out-model`` (default ``RUN/model``), stops at
``--max-steps`` / ``--max-minutes`` and continues with ``--resume``. :func:`add_run_flags`
adds these flags with the same names, destinations, defaults and help everywhere; a trainer
adds only its own flags (``--data`` and the like) beside them, and turns on the two flags
that only some trainers implement with keyword switches (``--stop-after``,
``--mixed-precision``, ``--compile-cache``).

``--set SECTION.KEY=VALUE`` (repeatable) changes one value of the ``--config`` file for this
run without editing it: :func:`effective_config` applies the overrides and writes the result
to ``RUN_DIR/effective_config.yaml``, which the trainer then reads in place of ``--config``
(so the run directory records what was trained). Trainers parse with :func:`parse_run_args`,
which does both and reports a malformed override as a usage error.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

#: where a trainer writes its final model when ``--out-model`` is not given
DEFAULT_OUT_MODEL = "model"


def add_run_flags(parser: argparse.ArgumentParser, *, config_required: bool = True,
                  stop_after: bool = False, mixed_precision: bool = False,
                  compile_cache: bool = False) -> argparse.ArgumentParser:
    """Add the common trainer flags to ``parser`` (returned, for chaining).

    Always: ``--config`` (required unless ``config_required=False``), ``--run-dir``
    (required), ``--out-model``, ``--max-steps``, ``--max-minutes``, ``--resume``, ``--cpu``.
    ``stop_after=True`` adds ``--stop-after``; ``mixed_precision=True`` adds
    ``--mixed-precision``; ``compile_cache=True`` adds ``--compile-cache``
    (:mod:`flexicodec.common.compile_cache`).
    """
    g = parser.add_argument_group("run")
    g.add_argument("--config", required=config_required, default=None, metavar="YAML",
                   help="run configuration (configs/*/*.yaml: model: and train: sections)")
    g.add_argument("--run-dir", required=True, metavar="DIR",
                   help="resumable state: checkpoints, metrics log and run settings")
    g.add_argument("--out-model", default=None, metavar="DIR",
                   help=f"where the final model is written at the end (default: "
                        f"RUN_DIR/{DEFAULT_OUT_MODEL})")
    g.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="total optimizer steps: the run's length and its LR schedule "
                        "(default: the config's train.max_steps)")
    if stop_after:
        g.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                       help="checkpoint and exit after this global step (the LR schedule is "
                            "unchanged)")
    g.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="wall-clock budget: checkpoint and exit cleanly before it runs out")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --run-dir")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU present")
    g.add_argument("--release-memory", action="store_true",
                   help="on a CPU, give the memory each step freed back to the OS: a lower "
                        "peak when batch shapes vary (ASR on 4-16-s utterances: -29 %%), "
                        "slower steps (+12 %%)")
    g.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="SECTION.KEY=VALUE",
                   help="override one value of --config (the value in YAML syntax), e.g. "
                        "--set train.batch_size=32; repeatable")
    if compile_cache:
        g.add_argument("--compile-cache", default=None, metavar="FILE",
                       help="with train.compile: load torch.compile's caches from FILE when it "
                            "exists and write them there once the step has compiled, so a "
                            "run on a fresh machine (same torch and GPU) skips most of the "
                            "compilation")
    if mixed_precision:
        g.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                       help="default: bf16 on CUDA, no elsewhere")
    return parser


def out_model_dir(args: argparse.Namespace) -> Path:
    """The final model directory of parsed run flags: ``--out-model``, else
    ``RUN_DIR/model``."""
    return Path(args.out_model) if args.out_model else Path(args.run_dir) / DEFAULT_OUT_MODEL


#: the ``--config`` file with the ``--set`` overrides applied, in the run directory
EFFECTIVE_CONFIG = "effective_config.yaml"
#: numbers in exponent notation that YAML 1.1 reads as strings (3e-4, 1E5)
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` (a parsed YAML config) with ``SECTION.KEY=VALUE`` overrides applied, in order;
    returns a new dict. The value is parsed as YAML (``32``, ``false``, ``[2, 3]``), and a
    number in exponent notation is a number (``3e-4``, which YAML 1.1 leaves a string);
    missing intermediate sections are created (the trainer rejects unknown keys)."""
    import copy

    import yaml

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. "
                             f"train.batch_size=32")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({why})") from None
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)            # YAML 1.1 reads 3e-4 as a string; a number is meant
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(path[:i + 1])} is a value, "
                                 f"not a section")
            node = child
        node[path[-1]] = value
    return out


def effective_config(args: argparse.Namespace) -> str | None:
    """The config file a trainer reads: ``--config`` itself without ``--set``; otherwise
    ``--config`` (or an empty config, for trainers whose config is optional) with the
    overrides applied, written atomically to ``RUN_DIR/effective_config.yaml``."""
    overrides = list(getattr(args, "overrides", None) or [])
    if not overrides:
        return args.config
    import yaml

    from flexicodec.common.atomic import atomic_write_text

    data: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides)
    out = Path(args.run_dir) / EFFECTIVE_CONFIG
    header = (f"# {args.config or '(no --config)'} with "
              + " ".join(f"--set {o}" for o in overrides) + "\n")
    atomic_write_text(out, header + yaml.safe_dump(data, sort_keys=False))
    return str(out)


def parse_run_args(parser: argparse.ArgumentParser,
                   argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``config`` replaced by :func:`effective_config`; a
    malformed ``--set`` or a missing ``--config`` file with ``--set`` is a usage error (the
    parser's message, exit status 2), not a traceback."""
    args = parser.parse_args(argv)
    try:
        args.config = effective_config(args)
        from flexicodec.common.heap import release_after_steps
        release_after_steps(args.release_memory)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return args
