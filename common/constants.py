"""Constants shared by every package: the audio sample rate and the codec's base frame grid.

All audio the toolkit reads, writes, encodes or synthesizes is mono at ``SAMPLE_RATE`` Hz.
The codec encodes it on a fixed grid of ``BASE_FRAME_RATE`` frames per second (one frame per
``HOP_SIZE`` samples) before merging frames into variable-length tokens; a merge threshold of
1.0 (no merging) gives exactly ``BASE_FRAME_RATE`` tokens per second, and every merged rate
lies in ``(0, BASE_FRAME_RATE]``.
"""
from __future__ import annotations

#: samples per second of all audio (mono)
SAMPLE_RATE: int = 16000

#: the codec's base frame rate in Hz: frames per second before merging
BASE_FRAME_RATE: float = 12.5

#: samples per base frame (SAMPLE_RATE / BASE_FRAME_RATE = 1280)
HOP_SIZE: int = 1280

if SAMPLE_RATE != HOP_SIZE * BASE_FRAME_RATE:      # keep the three in step if one is edited
    raise AssertionError("SAMPLE_RATE must equal HOP_SIZE * BASE_FRAME_RATE")
