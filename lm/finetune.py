"""LoRA speaker adaptation of a trained speech LM (peft).

``flexicodec-lm finetune --model LM_DIR --data TOK --run-dir RUN [--out-model ADAPTER_DIR]
[--max-steps N] [--rank R] [--lr LR] [--max-minutes M] [--resume] [--out-merged LM_DIR]``

Without ``--config`` (whose ``train:`` section is used otherwise) the run is
``FINETUNE_STEPS`` steps long unless ``--max-steps`` says otherwise; the adapters go to
``--out-model`` (default ``RUN/model``).

LoRA adapters go on the backbone's attention and MLP projections; everything else is frozen.
The adapter directory holds peft's ``adapter_config.json`` + ``adapter_model.safetensors`` and
``lm_adapter.json`` naming the base LM's identity, so it only loads onto that LM.
:func:`load_adapter` (``merge=True``) folds the adapters into the weights
(``merge_and_unload``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path


from flexicodec.common.atomic import atomic_path
from flexicodec.common.pretrained import CheckpointError
from flexicodec.lm.model import SpeechLM

log = logging.getLogger(__name__)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_META = "lm_adapter.json"
#: run length without --config or --max-steps
FINETUNE_STEPS = 300


def apply_lora(model: SpeechLM, rank: int = 16, alpha: float = 32.0, dropout: float = 0.05,
               targets: tuple[str, ...] = LORA_TARGETS):
    """Wrap ``model`` with fresh LoRA adapters (base weights frozen) → peft.PeftModel."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=list(targets), bias="none")
    return get_peft_model(model, cfg)


def base_identity(model_dir: str | os.PathLike) -> str:
    return str(SpeechLM.read_config(model_dir).get("identity", ""))


def save_adapter(peft_model, out: str | os.PathLike, base_id: str) -> Path:
    """Write the adapters only (not the base weights) atomically."""
    out = Path(out)
    with atomic_path(out) as tmp:
        peft_model.save_pretrained(str(tmp))
        (tmp / ADAPTER_META).write_text(json.dumps({"base_identity": base_id}, indent=1))
    return out


def load_adapter(model: SpeechLM, adapter_dir: str | os.PathLike, merge: bool = False,
                 base_id: str | None = None):
    """Attach saved adapters to ``model`` (a SpeechLM loaded from the base LM directory).
    ``merge=True`` returns a plain SpeechLM with the adapters folded in. ``base_id``: the
    base LM's identity (checked against the adapter's)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / ADAPTER_META
    if not meta_path.is_file():
        raise CheckpointError(f"{adapter_dir}: not an LM adapter directory (no {ADAPTER_META})")
    want = json.loads(meta_path.read_text())["base_identity"]
    if base_id is not None and want and base_id != want:
        raise CheckpointError(f"{adapter_dir}: adapters were trained on LM {want}, not "
                              f"{base_id}")
    pm = PeftModel.from_pretrained(model, str(adapter_dir))
    pm.eval()
    return pm.merge_and_unload() if merge else pm


def lora_parameter_names(peft_model) -> list[str]:
    return [n for n, p in peft_model.named_parameters() if p.requires_grad]


def build_parser():
    """The ``flexicodec-lm finetune`` argument parser."""
    import argparse

    from flexicodec.common.run_flags import add_run_flags

    p = argparse.ArgumentParser(prog="flexicodec-lm finetune", description=__doc__.split("\n")[0])
    add_run_flags(p, config_required=False)
    p.add_argument("--model", required=True, help="base LM directory")
    p.add_argument("--data", required=True, help="tokenized data of the new speaker")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--out-merged", default=None, metavar="DIR",
                   help="also write the LM with the adapters merged in here")
    p.add_argument("--valid-split", default="valid")
    return p


def main(argv: list[str] | None = None) -> int:
    from flexicodec.common.distributed import configure_process_logging
    from flexicodec.common.training import make_accelerator
    from flexicodec.common.run_flags import out_model_dir, parse_run_args
    from flexicodec.lm.data import load_tokenized, make_items, read_info
    from flexicodec.lm.model import load_lm
    from flexicodec.lm.train import TrainConfig, load_config, run_training

    a = parse_run_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tcfg = load_config(a.config)[1] if a.config else TrainConfig()
    if a.max_steps is not None:
        tcfg.max_steps = a.max_steps
    elif not a.config:
        tcfg.max_steps = FINETUNE_STEPS
    tcfg.lr, steps = a.lr, tcfg.max_steps
    tcfg.warmup_steps = min(tcfg.warmup_steps, max(1, steps // 10))
    tcfg.save_every = min(tcfg.save_every, steps)
    tcfg.eval_every = min(tcfg.eval_every, steps)
    model, tok = load_lm(a.model)
    info = read_info(a.data)
    if model.config.codec_identity and info["codec_identity"] != model.config.codec_identity:
        raise CheckpointError(f"{a.data} was tokenized with codec {info['codec_identity']}, "
                              f"the LM uses {model.config.codec_identity}")
    vocab = model.vocab
    train_items, durs = make_items(load_tokenized(a.data, "train"), tok, vocab, tcfg.max_len)
    try:
        valid_items, _ = make_items(load_tokenized(a.data, a.valid_split), tok, vocab, tcfg.max_len)
    except ValueError:
        valid_items = []
    pm = apply_lora(model, a.rank, a.alpha, a.dropout)
    n_train = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    log.info("LoRA r=%d: %d trainable of %d parameters; %d train utterances", a.rank, n_train,
             sum(p.numel() for p in pm.parameters()), len(train_items))
    acc = make_accelerator(tcfg.mixed_precision, tcfg.grad_accum, cpu=a.cpu)
    configure_process_logging(acc)
    tcfg.keep_best = False        # adapters are exported from the last step
    res = run_training(pm, train_items, durs, valid_items, tcfg, Path(a.run_dir), resume=a.resume,
                       max_minutes=a.max_minutes, accelerator=acc)
    if acc.is_main_process:
        trained = res["model"]
        out = out_model_dir(a)
        save_adapter(trained, out, base_identity(a.model))
        print(f"wrote adapters {out} (step {res['step']}, stopped: {res['stopped']})")
        if a.out_merged:
            merged = trained.merge_and_unload()
            merged.save_pretrained(a.out_merged, tokenizer_path=tok.path)
            print(f"wrote merged LM {a.out_merged}")
    acc.wait_for_everyone()
    print(json.dumps({k: v for k, v in res.items() if k not in ("model", "state_dict")}))
    return 0
