"""The codec's frozen semantic source: a small CTC phoneme recognizer.

- :mod:`flexicodec.codec.asr.model` — :class:`PhonemeASR` and its config.
- :mod:`flexicodec.codec.asr.train` — its trainer (``flexicodec asr-train``; configs in
  ``configs/asr/``).
"""
