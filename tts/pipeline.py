"""Text-to-speech: text → LM (semantic codes + lengths) → acoustic stage → codec decoder.

    tts = TTS.from_pretrained()            # shipped lm/, acoustic/, codec/ folders
    audio, sr = tts.synthesize("Hello there.", speaker="slt", seed=0)
    for chunk in tts.stream("Hello there.", seed=0): ...

Per sentence (``flexicodec.data.text.normalize_text`` + ``split_sentences``): the LM writes semantic
tokens and their lengths, conditioned on the frame-rate token and a voice prompt (transcript +
codes) prefix; the acoustic stage, prompted with the voice prompt, fills in the acoustics per
token; the codec decodes. The acoustic stage is either kind (:mod:`flexicodec.tts.stages`, chosen by the
``acoustic/config.json``): ``masked`` predicts the RVQ codes (prompt: its codes; decoded with
``decode_from_codes``), ``flow`` generates the codec's continuous latent (prompt: the latent
of its codes, ``latent_from_codes``; decoded with ``decode_from_latent``). Both :meth:`TTS.synthesize` and :meth:`TTS.stream`
run :func:`flexicodec.tts.chunking.synthesize_chunks`, so their outputs are identical for one seed.
Sentences are joined with ``pause_ms`` of silence; every sentence fades in and out.

Voice and rate:
- ``speaker=NAME``: a prompt shipped in ``ACOUSTIC_DIR/speakers.json``, or a voice saved in
  the ``voices`` store (:mod:`flexicodec.tts.voices`); the stored rate nearest to the requested one.
  ``prompt_wav`` + ``prompt_text``: your own reference (any sample rate; resampled to
  16 kHz); neither: the first shipped speaker, or no prompt.
- ``frame_rate`` (Hz): the LM's rate token and the prompt's encoding rate.
  ``threshold``: the prompt is encoded with that merging threshold (a shipped speaker's prompt
  is decoded and re-encoded) and the LM is conditioned on the rate the prompt achieved.
  Neither: ``DEFAULT_FRAME_RATE``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.data.audio import load_audio, prepare_waveform
from flexicodec.tts.acoustic import AcousticModel, predict_acoustic
from flexicodec.tts.acoustic_flow import FlowAcousticModel, predict_latent
from flexicodec.tts.chunking import ChunkConfig, VoiceCodes, synthesize_chunks
from flexicodec.tts.speakers import VoicePrompt as StoredPrompt
from flexicodec.tts.speakers import load_speakers, pick_prompt

log = logging.getLogger("flexicodec.tts")

DEFAULT_FRAME_RATE = 8.33
#: prompts quieter than this RMS are refused as silent
SILENCE_RMS = 1e-4
MAX_PROMPT_SECONDS = 20.0


class TTSError(ValueError):
    """Input the pipeline cannot synthesize (empty text, bad prompt, unknown speaker...)."""


class UnknownSpeakerError(TTSError):
    """A speaker name that is neither shipped nor a saved voice."""


@dataclass
class SentenceTokens:
    """The merged tokens of one synthesized sentence: it starts ``start_sample`` samples
    (16 kHz) into the output; ``token_lengths`` [T'] are 12.5 Hz frames per token."""

    start_sample: int
    token_lengths: list[int]


@dataclass
class SynthesisOptions:
    """Knobs of one synthesis call (besides text, voice and rate)."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    max_tokens_per_sentence: int = 400
    # masked stage: unmasking steps per RVQ level, level-0 temperature (None: the model's)
    acoustic_steps: tuple | None = None
    acoustic_temperature: float | None = None
    # flow stage: ODE steps, sampler ("euler" | "midpoint"), guidance scale (None: the model's)
    flow_steps: int | None = None
    flow_sampler: str | None = None
    guidance_scale: float | None = None
    pause_ms: float = 200.0
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    # the LM's KV cache (flexicodec.lm.cache_modes.LM_CACHES): dynamic | static (fixed-shape
    # steps) | compiled (torch.compile'd steps) | cudagraphs (and CUDA graphs); same tokens
    lm_cache: str = "dynamic"


@dataclass
class _Voice:
    lm_prompt: object | None          # lm.generate.VoicePrompt
    codes: VoiceCodes | None
    frame_rate: float


class TTS:
    """The full pipeline. ``lm`` is a ``(SpeechLM, TextTokenizer)`` pair (``flexicodec.lm.model.load_lm``);
    ``acoustic`` a masked (:class:`AcousticModel`) or flow (:class:`FlowAcousticModel`)
    stage."""

    def __init__(self, codec, lm, acoustic: AcousticModel | FlowAcousticModel,
                 speakers: dict[str, list[StoredPrompt]] | None = None,
                 options: SynthesisOptions | None = None, voices=None):
        if not (isinstance(lm, (tuple, list)) and len(lm) == 2):
            raise TypeError("lm must be a (SpeechLM, TextTokenizer) pair, see lm.model.load_lm")
        self.codec = codec.eval()
        self.lm, self.tokenizer = lm
        self.lm.eval()
        if not isinstance(acoustic, (AcousticModel, FlowAcousticModel)):
            raise TypeError(f"acoustic must be an AcousticModel or a FlowAcousticModel, got "
                            f"{type(acoustic).__name__}")
        self.acoustic = acoustic.eval()
        self.speakers = speakers or {}
        self.voices = voices        # tts.voices.VoiceStore of saved voices, or None
        self.options = options or SynthesisOptions()
        self._check_compatible()
        self.hop = int(round(SAMPLE_RATE / float(codec.frame_rate_base)))
        self.last_timing: dict[str, float] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike | None = None,
                        map_location: str = "cpu", **kw) -> "TTS":
        """Load ``DIR/{codec,lm,acoustic}`` (default: the shipped ``flexicodec_pretrained``
        folders). Raises FileNotFoundError naming what is missing. ``voices=VoiceStore(...)``
        (keyword) adds saved voices to the shipped speakers."""
        from flexicodec.codec.model import FlexiCodec
        from flexicodec.lm.model import load_lm

        if directory is None:
            from flexicodec.common.models import default_dir
            dirs = {n: default_dir(n) for n in ("codec", "lm", "acoustic")}
        else:
            directory = Path(directory)
            dirs = {n: directory / n for n in ("codec", "lm", "acoustic")}
            missing = [str(p) for p in dirs.values() if not (p / "config.json").is_file()]
            if missing:
                raise FileNotFoundError(f"model directory {directory} lacks {missing} "
                                        f"(needs codec/, lm/ and acoustic/ checkpoints)")
        codec = FlexiCodec.from_pretrained(dirs["codec"], map_location=map_location)
        lm = load_lm(dirs["lm"], codec=codec, map_location=map_location)
        from flexicodec.tts.stages import load_acoustic

        acoustic = load_acoustic(dirs["acoustic"], map_location=map_location)
        return cls(codec, lm, acoustic, speakers=load_speakers(dirs["acoustic"]), **kw)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``DIR/{codec,lm,acoustic}`` (with the text tokenizer and the shipped
        speakers) so that ``TTS.from_pretrained(DIR)`` loads this pipeline."""
        import tempfile
        from dataclasses import asdict

        from flexicodec.tts.speakers import save_speakers

        directory = Path(directory)
        self.codec.save_pretrained(directory / "codec")
        with tempfile.TemporaryDirectory() as tmp:
            tok = Path(tmp) / "text_tokenizer.model"
            tok.write_bytes(self.tokenizer.sp.serialized_model_proto())
            self.lm.save_pretrained(directory / "lm", tokenizer_path=tok)
        self.acoustic.save_pretrained(directory / "acoustic")
        if self.speakers:
            save_speakers(directory / "acoustic",
                          {n: [asdict(p) for p in ps] for n, ps in self.speakers.items()})
        return directory

    def _check_compatible(self) -> None:
        ac, codec = self.acoustic.config, self.codec
        if int(codec.semantic_vocab_size) != ac.semantic_vocab_size:
            raise TTSError(f"acoustic model expects {ac.semantic_vocab_size} semantic codes, "
                           f"the codec has {codec.semantic_vocab_size}")
        if int(codec.max_group) != ac.max_group:
            raise TTSError(f"acoustic model max_group {ac.max_group} != codec "
                           f"{codec.max_group}")
        if ac.kind == "flow":
            if ac.latent_dim != codec.config.latent_dim or ac.n_q > codec.config.n_q:
                raise TTSError(f"flow acoustic model (latent_dim {ac.latent_dim}, n_q {ac.n_q}) "
                               f"does not fit the codec (latent_dim {codec.config.latent_dim}, "
                               f"n_q {codec.config.n_q})")
        elif ac.codebook_size != codec.config.rvq_codebook_size or ac.n_q > codec.config.n_q:
            raise TTSError(f"acoustic model (codebook {ac.codebook_size}, n_q {ac.n_q}) does "
                           f"not fit the codec (codebook {codec.config.rvq_codebook_size}, "
                           f"n_q {codec.config.n_q})")
        if hasattr(self.lm, "check_codec"):
            self.lm.check_codec(codec)
        want = getattr(getattr(self.lm, "config", None), "text_input", None)
        have = getattr(self.tokenizer, "text_input", None)
        if want is not None and have != want:
            raise TTSError(f"the LM reads {want!r} text input, the tokenizer gives {have!r} "
                           f"(load both with lm.model.load_lm)")

    @property
    def device(self) -> torch.device:
        return next(self.acoustic.parameters()).device

    def list_speakers(self) -> list[str]:
        """Names of the shipped speakers (sorted)."""
        return sorted(self.speakers)

    def list_voices(self) -> list[str]:
        """Names of the saved voices (sorted; [] without a voice store)."""
        return self.voices.names() if self.voices is not None else []

    def _speaker_prompts(self, speaker: str) -> list[StoredPrompt]:
        """The stored prompts of a shipped speaker or a saved voice."""
        self.check_speaker(speaker)
        if speaker in self.speakers:
            return self.speakers[speaker]
        return self.voices.prompts(speaker, self.codec)

    def check_speaker(self, speaker: str) -> None:
        """UnknownSpeakerError unless ``speaker`` is shipped or a saved voice."""
        if speaker in self.speakers or (self.voices is not None
                                        and self.voices.exists(speaker)):
            return
        shipped = self.list_speakers()
        known = (f"{len(shipped)} shipped speakers, see list_speakers()"
                 if len(shipped) > 12 else ", ".join(shipped) or "none shipped")
        saved = self.list_voices()
        raise UnknownSpeakerError(
            f"unknown speaker {speaker!r} (known: {known}"
            + (f"; saved voices: {', '.join(saved)}" if saved else "") + ")")

    # ------------------------------------------------------------------ text
    def sentences(self, text: str) -> list[str]:
        """Normalized sentences of ``text``; TTSError when nothing is speakable."""
        from flexicodec.data.text import normalize_text, split_sentences

        if not isinstance(text, str):
            raise TTSError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise TTSError("empty text: nothing to synthesize")
        out = []
        for s in split_sentences(text):
            norm = normalize_text(s).strip()
            if any(ch.isalnum() for ch in norm):
                out.append(norm)
        if not out:
            raise TTSError(f"text has no speakable characters: {text[:60]!r}")
        return out

    # ------------------------------------------------------------------ voice
    def prompt_waveform(self, prompt_wav) -> np.ndarray:
        """A voice prompt's audio as mono float32 [T] at 16 kHz, checked: at most
        ``MAX_PROMPT_SECONDS``, not silent, at least two codec frames. ``prompt_wav``: a path
        or an ``(array, sample_rate)`` pair. Raises TTSError or ``flexicodec.data.audio.AudioError``."""
        if isinstance(prompt_wav, (tuple, list)):
            wav, sr = prompt_wav
            wav = prepare_waveform(np.asarray(wav), int(sr), SAMPLE_RATE, name="prompt")
        else:
            wav, _ = load_audio(prompt_wav, SAMPLE_RATE, max_seconds=MAX_PROMPT_SECONDS)
        if wav.size > MAX_PROMPT_SECONDS * SAMPLE_RATE:
            raise TTSError(f"prompt is {wav.size / SAMPLE_RATE:.1f} s long; use at most "
                           f"{MAX_PROMPT_SECONDS:.0f} s")
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        if rms < SILENCE_RMS:
            raise TTSError(f"prompt audio is silent (RMS {rms:.1e})")
        if wav.size < self.hop * 2:
            raise TTSError("prompt audio is too short (need at least two codec frames)")
        return wav

    @staticmethod
    def check_prompt_text(text: str | None) -> str:
        """A prompt's transcript, or TTSError when it has nothing speakable."""
        if not text or not any(ch.isalnum() for ch in text):
            raise TTSError("a prompt wav needs its transcript (prompt_text)")
        return text

    def _encode_prompt(self, wav: np.ndarray, text: str, frame_rate: float | None,
                       threshold: float | None) -> _Voice:
        from flexicodec.lm.generate import VoicePrompt

        self.check_prompt_text(text)
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(self.device)
        kw = {"threshold": threshold} if threshold is not None else {
            "frame_rate": frame_rate}
        with torch.no_grad():
            enc = self.codec.encode(x, SAMPLE_RATE, num_quantizers=self.acoustic.config.n_q,
                                    **kw)
        m = enc.token_mask[0].cpu()
        sem = enc.semantic_codes[0].cpu()[m].long()
        lens = enc.token_lengths[0].cpu()[m].long()
        ac = enc.acoustic_codes[0].cpu()[:, m].long()
        rate = float(enc.frame_rate[0]) if threshold is not None else float(frame_rate)
        from flexicodec.data.text import normalize_text
        pieces = self.tokenizer.encode(normalize_text(text))
        return _Voice(VoicePrompt(pieces, sem, lens), self._voice_codes(sem, lens, ac), rate)

    def _voice_codes(self, sem: torch.Tensor, lens: torch.Tensor, ac: torch.Tensor
                     ) -> VoiceCodes:
        """The acoustic stage's prompt from codes sem [P], lens [P], ac [>= n_q, P]: the codes
        [n_q, P] (masked) or the codec latent of the codes [D, P] (flow)."""
        ac = ac[:self.acoustic.config.n_q]
        if self.acoustic.config.kind == "masked":
            return VoiceCodes(sem, lens, ac)
        dev = self.device
        with torch.no_grad():
            lat = self.codec.latent_from_codes(sem[None].to(dev), ac[None].to(dev),
                                               lens[None].to(dev))
        return VoiceCodes(sem, lens, lat[0].float().cpu().transpose(0, 1).contiguous())

    def _voice(self, speaker, prompt_wav, prompt_text, frame_rate, threshold) -> _Voice:
        from flexicodec.lm.generate import VoicePrompt

        if frame_rate is not None and threshold is not None:
            raise TTSError("give frame_rate or threshold, not both")
        if frame_rate is not None and not 0 < float(frame_rate) <= BASE_FRAME_RATE:
            raise TTSError(f"frame_rate must be in (0, {BASE_FRAME_RATE}] Hz, got {frame_rate}")
        if threshold is not None and not 0 < float(threshold) <= 1.0:
            raise TTSError(f"threshold must be in (0, 1], got {threshold}")
        if speaker is not None and prompt_wav is not None:
            raise TTSError("give speaker or prompt_wav, not both")
        rate = float(frame_rate) if frame_rate is not None else DEFAULT_FRAME_RATE
        if prompt_wav is not None:
            self.check_prompt_text(prompt_text)
            return self._encode_prompt(self.prompt_waveform(prompt_wav), prompt_text, rate,
                                       threshold)
        if speaker is None:
            if not self.speakers:
                if threshold is not None:
                    raise TTSError("threshold needs a voice prompt (speaker or prompt_wav)")
                return _Voice(None, None, rate)
            speaker = self.list_speakers()[0]
        stored = pick_prompt(self._speaker_prompts(speaker),
                             rate if threshold is None else None)
        sem, lens, ac = stored.tensors()
        if threshold is not None:  # re-encode the stored prompt at this threshold
            with torch.no_grad():
                wav = self._decode_codes(sem, ac, lens)
            return self._encode_prompt(self.prompt_waveform((wav, SAMPLE_RATE)), stored.text,
                                       None, threshold)
        if ac.shape[0] < self.acoustic.config.n_q:
            raise TTSError(f"speaker {speaker!r} stores {ac.shape[0]} quantizers, the acoustic "
                           f"model needs {self.acoustic.config.n_q}")
        pieces = self.tokenizer.encode(stored.text)
        return _Voice(VoicePrompt(pieces, sem, lens), self._voice_codes(sem, lens, ac), rate)

    # ------------------------------------------------------------------ stages
    def _sampling(self, seed: int | None):
        from flexicodec.lm.cache_modes import lm_cache_settings
        from flexicodec.lm.generate import SamplingConfig

        o = self.options
        return SamplingConfig(temperature=o.temperature, top_k=o.top_k, top_p=o.top_p,
                              max_tokens=o.max_tokens_per_sentence, seed=seed,
                              **lm_cache_settings(o.lm_cache))

    def _decode(self, sem: torch.Tensor, acoustic: torch.Tensor, lens: torch.Tensor
                ) -> np.ndarray:
        """Codec decode of one token span from the acoustic stage's output → float32
        [sum(lens) * hop]: ``acoustic`` is codes [n_q, T] (masked) or latent [D, T] (flow)."""
        if self.acoustic.config.kind == "masked":
            return self._decode_codes(sem, acoustic, lens)
        with torch.no_grad():
            audio = self.codec.decode_from_latent(acoustic.transpose(0, 1)[None].to(self.device),
                                                  lens[None].to(self.device))
        return self._trim(audio, lens)

    def _decode_codes(self, sem: torch.Tensor, ac: torch.Tensor, lens: torch.Tensor
                      ) -> np.ndarray:
        """Codec decode of codes sem [T], ac [n, T], lens [T] → float32 [sum(lens) * hop]."""
        dev = self.device
        with torch.no_grad():
            audio = self.codec.decode_from_codes(sem[None].to(dev), ac[None].to(dev),
                                                 lens[None].to(dev))
        return self._trim(audio, lens)

    def _trim(self, audio: torch.Tensor, lens: torch.Tensor) -> np.ndarray:
        """Decoded audio [1, ~sum(lens) * hop] → float32 [sum(lens) * hop]."""
        audio = audio[0].float().cpu().numpy().reshape(-1)
        want = int(lens.sum()) * self.hop
        if abs(audio.size - want) >= self.hop:
            raise RuntimeError(f"codec decoded {audio.size} samples for {int(lens.sum())} "
                               f"frames; expected {want} (hop {self.hop})")
        if audio.size < want:
            audio = np.pad(audio, (0, want - audio.size))
        return audio[:want]

    def _predict(self, item: dict, seed: int) -> torch.Tensor:
        """The acoustic stage on one chunk item: codes [n_q, T] or latent [D, T]."""
        g = torch.Generator().manual_seed(seed)
        o = self.options
        if self.acoustic.config.kind == "flow":
            return predict_latent(self.acoustic, [item], steps=o.flow_steps,
                                  sampler=o.flow_sampler, guidance_scale=o.guidance_scale,
                                  generator=g)[0]
        return predict_acoustic(self.acoustic, [item], steps_per_level=self.options.acoustic_steps,
                                temperature=self.options.acoustic_temperature, generator=g)[0]

    def _sentence_tokens(self, sentence: str, voice: _Voice, seed: int, streaming: bool):
        """(code, length) pairs of one sentence from the LM (both modes: the same sampler)."""
        from flexicodec.lm.generate import generate, stream_tokens

        pieces = self.tokenizer.encode(sentence)
        sampling = self._sampling(seed)
        if streaming:
            return stream_tokens(self.lm, pieces, voice.frame_rate, sampling, voice.lm_prompt)
        out = generate(self.lm, [pieces], voice.frame_rate, sampling, voice.lm_prompt)[0]
        if out.truncated:
            log.warning("sentence hit max_tokens_per_sentence (%d) without an end: %r",
                        self.options.max_tokens_per_sentence, sentence[:60])
        return list(zip(out.semantic_codes.tolist(), out.token_lengths.tolist()))

    def _run(self, text: str, voice: _Voice, seed: int, streaming: bool,
             segments: list | None = None) -> Iterator[np.ndarray]:
        sentences = self.sentences(text)
        pause = np.zeros(int(self.options.pause_ms * SAMPLE_RATE / 1000), dtype=np.float32)
        t_lm = [0.0]

        def timed(tokens):
            it = iter(tokens)
            while True:
                t0 = time.perf_counter()
                try:
                    x = next(it)
                except StopIteration:
                    t_lm[0] += time.perf_counter() - t0
                    return
                t_lm[0] += time.perf_counter() - t0
                yield x

        def recorded(tokens, lengths: list[int]):
            for code, length in tokens:
                lengths.append(int(length))
                yield code, length

        offset = 0
        for i, sent in enumerate(sentences):
            if i:
                offset += pause.size
                yield pause
            t0 = time.perf_counter()
            toks = self._sentence_tokens(sent, voice, seed + i, streaming)
            t_lm[0] += time.perf_counter() - t0
            n = 0
            lengths: list[int] = []
            for piece in synthesize_chunks(recorded(timed(toks), lengths),
                                           predict=self._predict, decode=self._decode,
                                           hop=self.hop, sample_rate=SAMPLE_RATE,
                                           prompt=voice.codes, cfg=self.options.chunk,
                                           seed=seed, sentence=i):
                n += piece.size
                yield piece
            if n == 0:
                raise TTSError(f"the LM produced no speech tokens for {sent[:60]!r}")
            if segments is not None:
                segments.append(SentenceTokens(offset, lengths))
            offset += n
        self.last_timing["lm_s"] = t_lm[0]

    # ------------------------------------------------------------------ public API
    def render_tokens(self, semantic, lengths, prompt=None, seed: int = 0) -> np.ndarray:
        """The acoustic stage + codec on given merged tokens (the LM bypassed, e.g. the
        semantic codes and lengths of a real recording): semantic [T], lengths [T];
        ``prompt``: ``(semantic [P], lengths [P], acoustic codes [>= n_q, P])`` of a voice
        prompt, or None. The same chunked path as :meth:`synthesize` (one sentence, no
        pause) → float32 audio [sum(lengths) * hop]."""
        sem = torch.as_tensor(semantic, dtype=torch.long).reshape(-1)
        lens = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if sem.numel() == 0 or sem.shape != lens.shape:
            raise TTSError(f"render_tokens needs matching non-empty semantic codes and lengths, "
                           f"got {tuple(sem.shape)} and {tuple(lens.shape)}")
        voice = None
        if prompt is not None:
            ps, pl, pa = (torch.as_tensor(x, dtype=torch.long) for x in prompt)
            if pa.shape[0] < self.acoustic.config.n_q:
                raise TTSError(f"the prompt has {pa.shape[0]} quantizers, the acoustic stage "
                               f"needs {self.acoustic.config.n_q}")
            voice = self._voice_codes(ps.reshape(-1), pl.reshape(-1), pa)
        pieces = synthesize_chunks(zip(sem.tolist(), lens.tolist()), predict=self._predict,
                                   decode=self._decode, hop=self.hop, sample_rate=SAMPLE_RATE,
                                   prompt=voice, cfg=self.options.chunk, seed=int(seed),
                                   sentence=0)
        return np.concatenate(list(pieces)).astype(np.float32, copy=False)

    def synthesize(self, text: str | Sequence[str], speaker: str | None = None,
                   prompt_wav=None, prompt_text: str | None = None,
                   frame_rate: float | None = None, threshold: float | None = None,
                   seed: int | None = None, segments: list | None = None):
        """Synthesize ``text`` → ``(audio float32 [T], 16000)``; a list of texts gives a list
        of such pairs. ``prompt_wav``: a path or an ``(array, sample_rate)`` pair.
        ``segments``: a list to append one :class:`SentenceTokens` per sentence to."""
        if isinstance(text, (list, tuple)):
            if not text:
                raise TTSError("empty list of texts")
            if segments is not None:
                raise TTSError("segments are recorded for one text at a time")
            return [self.synthesize(t, speaker, prompt_wav, prompt_text, frame_rate, threshold,
                                    seed) for t in text]
        t0 = time.perf_counter()
        voice = self._voice(speaker, prompt_wav, prompt_text, frame_rate, threshold)
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        audio = np.concatenate(list(self._run(text, voice, seed, False, segments)))
        wall = time.perf_counter() - t0
        self.last_timing.update(total_s=wall, audio_s=audio.size / SAMPLE_RATE,
                                frame_rate=voice.frame_rate)
        return audio.astype(np.float32, copy=False), SAMPLE_RATE

    def stream(self, text: str, speaker: str | None = None, prompt_wav=None,
               prompt_text: str | None = None, frame_rate: float | None = None,
               threshold: float | None = None, seed: int | None = None,
               segments: list | None = None) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks (16 kHz) as the LM produces tokens. With the same seed
        ``np.concatenate(list(stream(...)))`` equals ``synthesize(...)[0]``. The time to the
        first chunk is in ``last_timing["first_chunk_s"]`` afterwards. ``segments``: a list
        to append one :class:`SentenceTokens` per sentence to, as each sentence ends."""
        t0 = time.perf_counter()
        voice = self._voice(speaker, prompt_wav, prompt_text, frame_rate, threshold)
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        total = 0
        for k, piece in enumerate(self._run(text, voice, seed, True, segments)):
            if k == 0:
                self.last_timing["first_chunk_s"] = time.perf_counter() - t0
            total += piece.size
            yield piece
        self.last_timing.update(total_s=time.perf_counter() - t0, audio_s=total / SAMPLE_RATE,
                                frame_rate=voice.frame_rate)
