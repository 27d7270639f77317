"""The bottom layer every other package builds on; it imports no model package.

- :mod:`flexicodec.common.pretrained` — ``save_pretrained`` / ``from_pretrained`` (config.json
  + sharded safetensors), weight-file errors, atomic file and directory writes.
- :mod:`flexicodec.common.models` — the models directory (``$FLEXICODEC_MODELS``, else the
  checkout's ``flexicodec_pretrained/``) and its default models.
- :mod:`flexicodec.common.training` — the training-loop helpers shared by every trainer
  (time budget, resumable checkpoints, batch plans, schedules).
- :mod:`flexicodec.common.distributed` — multi-process (DDP / FSDP) helpers.
"""
