"""Evaluation and research diagnostics of a codec (apart from the model itself).

- :mod:`~flexicodec.codec.eval.evaluate` — ``flexicodec eval``: reconstruction, intelligibility
  and speaker judges over a held-out corpus.
- :mod:`~flexicodec.codec.eval.per_voice` — the report's quality per voice.
- :mod:`~flexicodec.codec.eval.metrics` — the judges (PESQ, STOI, WER, speaker similarity, ...).
- :mod:`~flexicodec.codec.eval.group_error` — where the error goes, by merge-group length.
- :mod:`~flexicodec.codec.eval.allocation` — does the grouping follow the phonemes.
- :mod:`~flexicodec.codec.eval.plot` — merge-group and spectrogram plots.
"""
