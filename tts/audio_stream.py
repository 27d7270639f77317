"""Encode float32 audio chunks into the bytes of a response body, chunk by chunk.

Formats (the OpenAI speech API's names):

- ``wav``: 16-bit PCM WAV at the model's rate (16 kHz, mono). Streamed: the header comes
  first and its RIFF and data sizes are 0xFFFFFFFF ("until the end of the stream", as
  streaming WAV servers write it); readers such as soundfile, Python's ``wave`` and browsers
  take the data up to the end of the body. :func:`fix_wav_sizes` writes the real sizes into
  a complete body.
- ``pcm``: raw signed 16-bit little-endian samples, mono, at 24 kHz (the rate OpenAI's
  ``pcm`` has, so clients that play it need no change); resampled with a streaming soxr
  resampler, so the chunks join exactly as one resampling of the whole signal.
- ``flac``: 16-bit FLAC at 16 kHz. Not streamed: FLAC's header holds the length and
  checksum, so the body is encoded when the audio is complete (one piece, at the end).
"""
from __future__ import annotations

import io
import struct

import numpy as np

from flexicodec.common.constants import SAMPLE_RATE

PCM_SAMPLE_RATE = 24000
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
STREAMED = {"wav": True, "pcm": True, "flac": False}
UNKNOWN_SIZE = 0xFFFFFFFF


def to_int16(x: np.ndarray) -> bytes:
    """float32 [T] in [-1, 1] → little-endian int16 bytes (clipped, rounded)."""
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(y).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN_SIZE, channels: int = 1) -> bytes:
    """44-byte header of a 16-bit PCM WAV; ``data_bytes`` 0xFFFFFFFF = unknown length."""
    riff = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * 2 * channels,
                          2 * channels, 16)
            + b"data" + struct.pack("<I", data_bytes))


def fix_wav_sizes(body: bytes) -> bytes:
    """A complete streamed WAV body (header of :func:`wav_header`) with its real sizes."""
    if len(body) < 44 or body[:4] != b"RIFF" or body[36:40] != b"data":
        raise ValueError("not a WAV body with a 44-byte header")
    n = len(body) - 44
    return body[:4] + struct.pack("<I", 36 + n) + body[8:40] + struct.pack("<I", n) + body[44:]


class StreamEncoder:
    """``encode(chunk float32 [T]) -> bytes`` per chunk, then ``finish() -> bytes`` once."""

    def __init__(self, response_format: str, sample_rate: int = SAMPLE_RATE):
        if response_format not in MEDIA_TYPES:
            raise ValueError(f"unsupported response_format {response_format!r}; use one of "
                             f"{', '.join(MEDIA_TYPES)}")
        self.format = response_format
        self.sample_rate = int(sample_rate)
        self.media_type = MEDIA_TYPES[response_format]
        self._started = False
        self._held: list[np.ndarray] = []      # flac: the whole signal
        self._resampler = None
        if response_format == "pcm" and self.sample_rate != PCM_SAMPLE_RATE:
            import soxr
            self._resampler = soxr.ResampleStream(self.sample_rate, PCM_SAMPLE_RATE, 1,
                                                  dtype="float32")

    @property
    def output_sample_rate(self) -> int:
        return PCM_SAMPLE_RATE if self.format == "pcm" else self.sample_rate

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self.format == "flac":
            self._held.append(chunk)
            return b""
        if self.format == "pcm":
            if self._resampler is not None:
                chunk = self._resampler.resample_chunk(chunk)
            return to_int16(chunk)
        head = b"" if self._started else wav_header(self.sample_rate)
        self._started = True
        return head + to_int16(chunk)

    def finish(self) -> bytes:
        if self.format == "flac":
            import soundfile as sf
            buf = io.BytesIO()
            audio = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            samples = np.frombuffer(to_int16(audio), "<i2")   # the same samples as wav
            sf.write(buf, samples, self.sample_rate, format="FLAC", subtype="PCM_16")
            return buf.getvalue()
        if self.format == "pcm":
            if self._resampler is None:
                return b""
            return to_int16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        return b"" if self._started else wav_header(self.sample_rate)
