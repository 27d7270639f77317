"""The command-line flags every trainer shares, declared once.

Every trainer (``flexicodec asr-train``, ``flexicodec train``, ``flexicodec-lm train``,
``flexicodec-lm finetune``, ``flexicodec-tts train-acoustic``) keeps its resumable state in
``--run-dir`` and writes its final model to ``--out-model`` (default ``RUN/model``), stops at
``--max-steps`` / ``--max-minutes`` and continues with ``--resume``. :func:`add_run_flags`
adds these flags with the same names, destinations, defaults and help everywhere; a trainer
adds only its own flags (``--data`` and the like) beside them, and turns on the two flags
that only some trainers implement with keyword switches.
"""
from __future__ import annotations

import argparse
from pathlib import Path

#: where a trainer writes its final model when ``--out-model`` is not given
DEFAULT_OUT_MODEL = "model"


def add_run_flags(parser: argparse.ArgumentParser, *, config_required: bool = True,
                  stop_after: bool = False, mixed_precision: bool = False
                  ) -> argparse.ArgumentParser:
    """Add the common trainer flags to ``parser`` (returned, for chaining).

    Always: ``--config`` (required unless ``config_required=False``), ``--run-dir``
    (required), ``--out-model``, ``--max-steps``, ``--max-minutes``, ``--resume``, ``--cpu``.
    ``stop_after=True`` adds ``--stop-after``; ``mixed_precision=True`` adds
    ``--mixed-precision``.
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
    if mixed_precision:
        g.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                       help="default: bf16 on CUDA, no elsewhere")
    return parser


def out_model_dir(args: argparse.Namespace) -> Path:
    """The final model directory of parsed run flags: ``--out-model``, else
    ``RUN_DIR/model``."""
    return Path(args.out_model) if args.out_model else Path(args.run_dir) / DEFAULT_OUT_MODEL
