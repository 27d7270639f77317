"""The HTTP speech server on a live uvicorn (loopback, random port) with a tiny random TTS:
the official ``openai`` client, streaming before the synthesis ends, the bounded queue (503),
client disconnects, bad input, saved voices (HTTP and CLI), auth, SSE + the token picture."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch
import uvicorn

from flexicodec.benchmarks.tts_speed import build_random_tts
from flexicodec.tts.audio_stream import PCM_SAMPLE_RATE, StreamEncoder, fix_wav_sizes, to_int16
from flexicodec.tts.server import ServerConfig, create_app, is_loopback
from flexicodec.tts.voices import VoiceStore

torch.set_num_threads(1)
SR = 16000


def tone(seconds: float = 1.5, f0: float = 140.0, sr: int = SR) -> np.ndarray:
    """A voiced-like test signal: harmonics with a slow vibrato and an amplitude envelope."""
    t = np.arange(int(seconds * sr)) / sr
    ph = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
    x = sum(np.sin(k * ph) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    """Tiny random pipeline (16 tokens a sentence at most) with one shipped speaker, 'alice'
    (real codec codes of a test signal at two rates), and an empty voice store."""
    t = build_random_tts(torch.device("cpu"), max_tokens=16)
    prompts = []
    for rate in (12.5, 6.25):
        enc = t.codec.encode(tone(), SR, frame_rate=rate).item(0)
        from flexicodec.tts.speakers import VoicePrompt
        prompts.append(VoicePrompt("hello there", float(enc.frame_rate[0]),
                                   enc.semantic_codes[0].tolist(),
                                   enc.token_lengths[0].tolist(),
                                   enc.acoustic_codes[0].tolist()))
    t.speakers = {"alice": prompts}
    t.voices = VoiceStore(tmp_path_factory.mktemp("voices"))
    return t


class LiveServer:
    """uvicorn serving ``create_app(tts, config)`` on 127.0.0.1 in a thread."""

    def __init__(self, tts, config: ServerConfig):
        self.app = create_app(tts, config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 30, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def wait(self, cond, timeout: float = 20.0) -> dict:
        t0 = time.monotonic()
        while True:
            h = self.health()
            if cond(h):
                return h
            assert time.monotonic() - t0 < timeout, f"timed out; health {h}"
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def live(tts, **config):
    srv = LiveServer(tts, ServerConfig(**config))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def server(tts):
    with live(tts, workers=2, queue_size=4, max_input_chars=200,
              max_upload_bytes=2_000_000) as srv:
        yield srv


@contextlib.contextmanager
def gated(tts):
    """Every acoustic-stage call after the first waits for ``gate`` (so a request stops
    after its first chunk); yields (gate, calls)."""
    gate, calls = threading.Event(), []
    orig = tts._predict

    def predict(item, seed):
        calls.append(seed)
        if len(calls) > 1 and not gate.wait(30):
            raise RuntimeError("gate never opened")
        return orig(item, seed)
    tts._predict = predict
    try:
        yield gate, calls
    finally:
        gate.set()
        del tts._predict


def expected_pcm16(tts, text, **kw) -> np.ndarray:
    audio, _ = tts.synthesize(text, **kw)
    return np.frombuffer(to_int16(audio), "<i2")


def wav_samples(body: bytes) -> np.ndarray:
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE" and body[36:40] == b"data"
    x, sr = sf.read(io.BytesIO(fix_wav_sizes(body)), dtype="int16")
    assert sr == SR
    return x


TEXT = "Hello there. How are you today?"


# ---------------------------------------------------------------------- encoders
def test_stream_encoders_join_exactly():
    x = tone(1.0)
    pieces = np.array_split(x, [1000, 1001, 7000, 12000])
    for fmt in ("wav", "pcm", "flac"):
        enc = StreamEncoder(fmt)
        body = b"".join(enc.encode(p) for p in pieces) + enc.finish()
        if fmt == "wav":
            assert np.array_equal(wav_samples(body), np.frombuffer(to_int16(x), "<i2"))
        elif fmt == "pcm":   # streaming resampling = one resampling of the whole signal
            import soxr
            want = np.frombuffer(to_int16(soxr.resample(x, SR, PCM_SAMPLE_RATE)), "<i2")
            got = np.frombuffer(body, "<i2")
            assert got.size == want.size == 24000
            assert np.abs(got.astype(int) - want).max() <= 1
        else:
            y, sr = sf.read(io.BytesIO(body), dtype="int16")
            assert sr == SR and np.array_equal(y, np.frombuffer(to_int16(x), "<i2"))
    with pytest.raises(ValueError, match="unsupported"):
        StreamEncoder("mp3")


def test_worker_pool_window_and_stalled_reader():
    """At most ``max_pending`` unread items per job; a reader that takes nothing for
    ``stall_s`` loses the job, and the worker is free again."""
    import asyncio

    from flexicodec.tts.workers import QueueFullError, WorkerPool
    produced = []

    def gen():
        for i in range(10):
            produced.append(i)
            yield i

    async def scenario():
        pool = WorkerPool(workers=1, queue_size=0, max_pending=2, stall_s=0.3)
        try:
            job = pool.submit(gen)
            with pytest.raises(QueueFullError) as full:
                pool.submit(gen)
            assert full.value.retry_after >= 1
            assert await job.get() == 0
            await asyncio.sleep(1.0)                 # read nothing more
            assert produced == [0, 1, 2, 3]          # 1 taken + 2 unread + 1 refused
            assert job.cancelled and pool.stats()["cancelled"] == 1
            job2 = pool.submit(lambda: iter(["x"]))  # the worker is free (any iterator)
            assert await job2.get() == "x"
            with pytest.raises(StopAsyncIteration):
                await job2.get()
        finally:
            pool.close()
    asyncio.run(scenario())


# ---------------------------------------------------------------------- openai client
def test_openai_client(server, tts):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    extra = {"seed": 3, "frame_rate": 12.5}
    want = expected_pcm16(tts, TEXT, speaker="alice", seed=3, frame_rate=12.5)
    resp = client.audio.speech.create(model="tts-1", voice="alice", input=TEXT,
                                      response_format="wav", extra_body=extra)
    assert np.array_equal(wav_samples(resp.content), want)
    with client.audio.speech.with_streaming_response.create(
            model="flexicodec", voice="alice", input=TEXT, response_format="wav",
            extra_body=extra) as r:
        assert r.headers["content-type"] == "audio/wav" and r.headers["x-seed"] == "3"
        parts = list(r.iter_bytes())
    assert np.array_equal(wav_samples(b"".join(parts)), want)
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alice", input=TEXT, response_format="wav",
            stream_format="sse", extra_body=extra) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    assert np.array_equal(wav_samples(b"".join(base64.b64decode(e["audio"])
                                               for e in events[:-1])), want)
    flac = client.audio.speech.create(model="tts-1", voice="alice", input=TEXT,
                                      response_format="flac", extra_body=extra).content
    assert np.array_equal(sf.read(io.BytesIO(flac), dtype="int16")[0], want)
    pcm = client.audio.speech.create(model="tts-1", voice="alice", input=TEXT,
                                     response_format="pcm", extra_body=extra).content
    assert abs(len(pcm) // 2 - want.size * 3 // 2) <= 2          # 24 kHz int16
    # a threshold instead of a frame rate, and the object form of voice
    r = client.audio.speech.create(model="tts-1", voice={"id": "alice"}, input="Hello.",
                                   response_format="wav", extra_body={"threshold": 0.9,
                                                                      "seed": 1})
    assert np.array_equal(wav_samples(r.content),
                          expected_pcm16(tts, "Hello.", speaker="alice", threshold=0.9, seed=1))
    # errors arrive as the client's exception types, with the server's message
    with pytest.raises(openai.NotFoundError, match="unknown voice 'alloy'"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    with pytest.raises(openai.UnprocessableEntityError, match="empty"):
        client.audio.speech.create(model="tts-1", voice="alice", input=" \n\t ")
    with pytest.raises(openai.BadRequestError, match="speed is not supported"):
        client.audio.speech.create(model="tts-1", voice="alice", input="Hi.", speed=1.5)
    with pytest.raises(openai.BadRequestError, match="'mp3' is not supported"):
        client.audio.speech.create(model="tts-1", voice="alice", input="Hi.",
                                   response_format="mp3")
    with pytest.raises(openai.APIStatusError, match="limit is 200") as e:
        client.audio.speech.create(model="tts-1", voice="alice", input="word " * 60)
    assert e.value.status_code == 413
    assert {m.id for m in client.models.list()} >= {"flexicodec", "tts-1"}


# ---------------------------------------------------------------------- streaming
def test_first_bytes_arrive_before_the_synthesis_ends(server, tts):
    body = {"model": "flexicodec", "input": TEXT, "voice": "alice", "seed": 5}
    n_chunks = []
    with gated(tts) as (gate, calls):
        gate.set()
        expected_pcm16(tts, TEXT, speaker="alice", seed=5)
        n_chunks.append(len(calls))
    assert n_chunks[0] >= 3
    with gated(tts) as (gate, calls):
        with httpx.stream("POST", server.url + "/v1/audio/speech", json=body,
                          timeout=httpx.Timeout(10.0)) as r:
            assert r.status_code == 200
            it = r.iter_raw()
            first = next(it)                      # while the second chunk is held back
            assert first[:4] == b"RIFF" and len(first) > 44
            assert len(calls) <= 2 and not gate.is_set()  # chunk 2 cannot have ended
            gate.set()
            rest = b"".join(it)
    assert np.array_equal(wav_samples(first + rest),
                          expected_pcm16(tts, TEXT, speaker="alice", seed=5))


def test_disconnect_frees_the_worker(tts):
    body = {"model": "flexicodec", "input": TEXT, "voice": "alice", "seed": 5}
    with live(tts, workers=1, queue_size=0) as srv:
        pool, jobs = srv.app.state.pool, []
        submit = pool.submit
        pool.submit = lambda fn, loop=None: jobs.append(submit(fn, loop)) or jobs[-1]
        with gated(tts) as (gate, calls):
            with httpx.stream("POST", srv.url + "/v1/audio/speech", json=body) as r:
                it = r.iter_raw()
                next(it)
                assert srv.health()["busy"] == 1
                it.close()                        # hang up mid-stream
            t0 = time.monotonic()
            while not jobs[0].cancelled:          # the server saw the client go
                assert time.monotonic() - t0 < 10, "disconnect not noticed"
                time.sleep(0.02)
            gate.set()                            # the worker stops at its next chunk
            h = srv.wait(lambda h: h["busy"] == 0)
            assert h["cancelled"] == 1 and h["completed"] == 0
            assert len(calls) == 2                # of >= 4 for the whole text
        r = httpx.post(srv.url + "/v1/audio/speech", json=body, timeout=30)
        assert r.status_code == 200               # the only worker is free again


def test_full_queue_answers_503_with_retry_after(tts):
    body = {"model": "flexicodec", "input": TEXT, "voice": "alice", "seed": 2}
    want = expected_pcm16(tts, TEXT, speaker="alice", seed=2)
    with live(tts, workers=1, queue_size=1) as srv, gated(tts) as (gate, calls):
        results = {}

        def fetch(key):
            results[key] = httpx.post(srv.url + "/v1/audio/speech", json=body, timeout=60)
        a = threading.Thread(target=fetch, args=("a",))
        a.start()
        srv.wait(lambda h: h["busy"] == 1)
        b = threading.Thread(target=fetch, args=("b",))
        b.start()
        srv.wait(lambda h: h["queued"] == 1)
        r = httpx.post(srv.url + "/v1/audio/speech", json=body, timeout=10)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "server_busy"
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.audio.speech.create(model="tts-1", voice="alice", input="Hi.")
        gate.set()
        a.join(60)
        b.join(60)
        for key in "ab":       # the admitted requests are answered in full
            assert results[key].status_code == 200
            assert np.array_equal(wav_samples(results[key].content), want)
        assert srv.health()["rejected"] == 2


# ---------------------------------------------------------------------- bad input
def test_bad_speech_requests(server):
    url = server.url + "/v1/audio/speech"

    def post(**kw):
        body = {"model": "flexicodec", "input": "Hello.", "voice": "alice", **kw}
        return httpx.post(url, json=body, timeout=30)
    cases = [(post(input="x" * 201), 413, "input_too_long"),
             (post(input="   \n"), 422, "empty_input"),
             (post(input="?! ..."), 422, "invalid_input"),
             (post(voice="nobody"), 404, "voice_not_found"),
             (post(voice="../../etc/passwd"), 400, "invalid_voice_name"),
             (post(voice={"id": "a/b"}), 400, "invalid_voice_name"),
             (post(model="whisper-1"), 404, "model_not_found"),
             (post(response_format="opus"), 400, "unsupported_response_format"),
             (post(speed=0.5), 400, "unsupported_speed"),
             (post(instructions="cheerful"), 400, "unsupported_instructions"),
             (post(frame_rate=6.25, threshold=0.5), 400, "invalid_rate"),
             (post(frame_rate=40), 422, "invalid_input"),
             (post(unknown_field=1), 422, "invalid_request"),
             (httpx.post(url, content=b"{not json", timeout=10), 422, "invalid_json"),
             (httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"},
                         timeout=10), 422, "invalid_json"),
             (httpx.post(url, json=["a list"], timeout=10), 422, "invalid_json"),
             (post(input="x" * 70_000), 413, "body_too_large"),      # refused unread
             (httpx.post(url, content=iter([b'{"model": "flexicodec"}']), timeout=10),
              411, "length_required")]                                # chunked, no length
    for r, status, code in cases:
        assert r.status_code == status, (r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"], err
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    assert server.health()["busy"] == 0


def test_bad_voice_uploads(server, tts, tmp_path):
    url = server.url + "/v1/voices"

    def upload(data: bytes, name="v1", text="hello there", filename="ref.wav"):
        return httpx.post(url, data={"name": name, "text": text},
                          files={"wav": (filename, data, "audio/wav")}, timeout=30)
    noise = np.random.default_rng(0).bytes(5000)
    cases = [(upload(noise), 422, "invalid_audio"),                              # corrupt
             (upload(wav_bytes(np.zeros(32000, np.float32))), 422, "invalid_input"),  # silent
             (upload(wav_bytes(tone(21.0))), 422, "invalid_audio"),              # too long
             (upload(b"\x89PNG\r\n\x1a\n" + noise, filename="x.png"), 422, "invalid_audio"),
             (upload(b"just some text", filename="notes.txt"), 422, "invalid_audio"),
             (upload(b""), 422, "invalid_audio"),
             (upload(wav_bytes(tone()), text="  "), 422, "invalid_input"),     # no transcript
             (upload(wav_bytes(tone()), name="../escape"), 400, "invalid_voice_name"),
             (upload(wav_bytes(tone()), name=".hidden"), 400, "invalid_voice_name"),
             (upload(wav_bytes(tone()), name="a" * 65), 400, "invalid_voice_name"),
             (upload(b"\0" * 2_030_000), 413, "upload_too_large"),
             (upload(b"\0" * 2_100_000), 413, "body_too_large"),
             (httpx.post(url, data={"name": "v1"}, files={"wav": ("r.wav", wav_bytes(tone()))}),
              422, "missing_field")]
    for r, status, code in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.json()["error"]["code"] == code, r.json()
    for path in ("..%2F..%2Fetc", "%2E%2E", "a%00b", "x/y", "%2Fetc%2Fpasswd"):
        r = httpx.delete(f"{server.url}/v1/voices/{path}")
        assert r.status_code == 400, (path, r.status_code, r.text)
    assert tts.voices.names() == [] and not any(tts.voices.directory.iterdir())
    assert not (tmp_path.parent / "escape").exists()


# ---------------------------------------------------------------------- saved voices
def test_saved_voices_over_http(server, tts):
    from flexicodec.codec.codes_file import load_codes
    url = server.url + "/v1/voices"
    files = {"wav": ("ref.wav", wav_bytes(tone(2.0, f0=180.0, sr=24000), 24000), "audio/wav")}
    r = httpx.post(url, data={"name": "bob", "text": "this is bob"}, files=files, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "bob" and len(r.json()["frame_rates"]) == 3
    # stored as codes + text + metadata, no pickle
    vdir = tts.voices.directory / "bob"
    assert sorted(p.name for p in vdir.iterdir()) == ["codes.npz", "voice.json"]
    codes = load_codes(vdir / "codes.npz")
    codes.check_model(tts.codec)
    assert codes.batch_size == 3 and codes.num_quantizers == tts.acoustic.config.n_q
    info = json.loads((vdir / "voice.json").read_text())
    assert info["text"] == "this is bob" and info["source"]["seconds"] == 2.0
    listed = httpx.get(url).json()["data"]
    assert {"name": "alice", "type": "builtin"} in listed
    assert [v["name"] for v in listed if v["type"] == "saved"] == ["bob"]
    body = {"model": "tts-1", "input": "Hello there.", "voice": "bob", "seed": 4}
    r = httpx.post(server.url + "/v1/audio/speech", json=body, timeout=30)
    assert r.status_code == 200
    with_bob = expected_pcm16(tts, "Hello there.", speaker="bob", seed=4)
    assert np.array_equal(wav_samples(r.content), with_bob)
    assert not np.array_equal(with_bob, expected_pcm16(tts, "Hello there.", speaker="alice",
                                                       seed=4))
    assert httpx.post(url, data={"name": "bob", "text": "again"}, files=files,
                      timeout=30).status_code == 409
    assert httpx.post(url, data={"name": "alice", "text": "again"}, files=files,
                      timeout=30).status_code == 409
    assert httpx.delete(url + "/alice").status_code == 409          # shipped: not removable
    assert httpx.delete(url + "/bob").json() == {"name": "bob", "deleted": True}
    assert httpx.delete(url + "/bob").status_code == 404
    assert httpx.post(server.url + "/v1/audio/speech", json=body).status_code == 404
    assert not any(tts.voices.directory.iterdir())   # no staging or trash left behind


def test_voice_cli(tts, tmp_path, capsys):
    from flexicodec.tts.cli import main
    model = tts.save_pretrained(tmp_path / "model")
    voices = tmp_path / "voices"
    ref = tmp_path / "ref.wav"
    sf.write(ref, tone(1.5), 22050)
    common = ["--voices", str(voices)]
    assert main(["voice", "add", "carol", "--wav", str(ref), "--text", "hello there",
                 "--model", str(model), *common]) == 0
    assert main(["voice", "add", "carol", "--wav", str(ref), "--text", "hello there",
                 "--model", str(model), *common]) == 2
    assert main(["voice", "add", "../x", "--wav", str(ref), "--text", "hi", *common]) == 2
    assert "invalid voice name" in capsys.readouterr().err
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(20000, np.float32), SR)
    assert main(["voice", "add", "dave", "--wav", str(silent), "--text", "hi",
                 "--model", str(model), *common]) == 2
    assert "silent" in capsys.readouterr().err
    assert main(["voice", "list", "--model", str(model), *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("carol\tsaved\t") and out[0].endswith("hello there")
    assert out[1:] == ["alice\tbuiltin"]
    assert main(["--list-speakers", "--model", str(model), *common]) == 0
    assert capsys.readouterr().out.split() == ["alice", "saved", "voices", f"({voices}):",
                                               "carol"]
    # the saved voice speaks through the pipeline loaded from that directory
    from flexicodec.tts.pipeline import TTS
    loaded = TTS.from_pretrained(model, voices=VoiceStore(voices))
    loaded.options.max_tokens_per_sentence = 8
    audio, _ = loaded.synthesize("Hello.", speaker="carol", seed=0)
    assert audio.size > 0 and np.all(np.isfinite(audio))
    assert main(["voice", "rm", "carol", *common]) == 0
    assert main(["voice", "rm", "carol", *common]) == 2
    assert VoiceStore(voices).names() == []


# ---------------------------------------------------------------------- SSE and picture
def test_sse_events_and_token_picture(server, tts):
    text = "Hello there. One two three."
    body = {"model": "flexicodec", "input": text, "voice": "alice", "seed": 7,
            "stream_format": "sse", "frame_rate": 6.25}
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    wav = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    segments = []
    want = expected_pcm16(tts, text, speaker="alice", seed=7, frame_rate=6.25,
                          segments=segments)
    assert np.array_equal(wav_samples(wav), want)
    done = events[-1]
    assert done["seed"] == 7 and done["sample_rate"] == SR
    assert done["segments"] == [{"start_s": s.start_sample / SR,
                                 "token_lengths": s.token_lengths} for s in segments]
    assert len(segments) == 2
    first_end = segments[0].start_sample + sum(segments[0].token_lengths) * 1280
    assert segments[1].start_sample == first_end + int(0.2 * SR)   # the 200 ms pause
    assert done["usage"]["output_tokens"] == sum(len(s.token_lengths) for s in segments)
    files = {"wav": ("speech.wav", fix_wav_sizes(wav), "audio/wav")}
    r = httpx.post(server.url + "/v1/plot", data={"segments": json.dumps(done["segments"])},
                   files=files, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n" and len(r.content) > 5000
    bad = [{"start_s": 0.0, "token_lengths": [0, 99]}]
    r = httpx.post(server.url + "/v1/plot", data={"segments": json.dumps(bad)}, files=files)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_segments"
    late = [{"start_s": 999.0, "token_lengths": [1]}]
    r = httpx.post(server.url + "/v1/plot", data={"segments": json.dumps(late)}, files=files)
    assert r.status_code == 422 and "after the audio" in r.json()["error"]["message"]


# ---------------------------------------------------------------------- auth and page
def test_api_key(tts, monkeypatch, capsys):
    with live(tts, api_key="s3cret") as srv:
        assert httpx.get(srv.url + "/health").json()["auth"] is True
        assert httpx.get(srv.url + "/").status_code == 200          # the page itself
        r = httpx.get(srv.url + "/v1/voices")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(srv.url + "/v1/voices", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0
                          ).audio.speech.create(model="tts-1", voice="alice", input="Hi.")
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.audio.speech.create(model="tts-1", voice="alice", input="Hi.",
                                      response_format="wav").content[:4] == b"RIFF"
    from flexicodec.tts.cli import main
    monkeypatch.delenv("FLEXICODEC_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2   # refused before loading
    assert "needs an API key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")


def test_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="text"', 'id="voice"', 'id="frame-rate"', 'id="synthesize"',
                    'id="player"', 'id="download"', 'id="tokens"'):
        assert element in r.text


# ---------------------------------------------------------------------- the page, in Chromium
def chrome_driver():
    """Headless Debian chromium through its chromedriver (installed by scripts/setup.sh)."""
    import os
    import shutil
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing (scripts/setup.sh installs "
                        "them)")
        pytest.skip("chromium / chromedriver not installed (apt install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1000", "--mute-audio"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_web_page_in_chromium(server, tts, tmp_path):
    """Type text, press the button, wait for the audio: the player holds a playable WAV (the
    browser decodes it) equal to the pipeline's output, the download link is it, and the
    merged-token picture is shown. Saves a screenshot ($FLEXICODEC_SCREENSHOT_DIR or tmp)."""
    import os
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    text = "Hello from the web page. One two three."
    driver = chrome_driver()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#voice option"))
        Select(driver.find_element(By.ID, "voice")).select_by_value("alice")
        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys(text)
        driver.find_element(By.ID, "seed").send_keys("11")
        driver.execute_script("const r = document.getElementById('frame-rate'); r.value = 6.25;"
                              "r.dispatchEvent(new Event('input'));")
        assert driver.find_element(By.ID, "frame-rate-value").text == "6.25 Hz"
        driver.find_element(By.ID, "synthesize").click()
        wait.until(lambda d: d.execute_script(
            "const p = document.getElementById('player');"
            "return p.src !== '' && p.readyState >= 1 && p.duration > 0"))
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('tokens'); return i.complete && i.naturalWidth > 0"))
        status = driver.find_element(By.ID, "status").text
        assert "s of audio" in status and "seed 11" in status, status
        assert "merged tokens" in driver.find_element(By.ID, "tokens-caption").text
        player = driver.find_element(By.ID, "player")
        link = driver.find_element(By.ID, "download")
        assert link.get_attribute("href") == player.get_attribute("src")
        assert link.get_attribute("download") == "speech.wav"
        got = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const player = document.getElementById('player');
            (async () => {
              const buf = await (await fetch(player.src)).arrayBuffer();
              const ctx = new OfflineAudioContext(1, 16000, 16000);
              const audio = await ctx.decodeAudioData(buf.slice(0));
              let s = ''; const b = new Uint8Array(buf);
              for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
              done({wav: btoa(s), decoded: audio.length, duration: player.duration});
            })().catch((e) => done({error: String(e)}));""")
        assert "error" not in got, got
        wav = base64.b64decode(got["wav"])
        assert fix_wav_sizes(wav) == wav          # the page wrote the real RIFF/data sizes
        want = expected_pcm16(tts, text, speaker="alice", seed=11, frame_rate=6.25)
        assert np.array_equal(wav_samples(wav), want)
        assert got["decoded"] == want.size and abs(got["duration"] - want.size / SR) < 0.01
        out = Path(os.environ.get("FLEXICODEC_SCREENSHOT_DIR") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        shot = out / "serve_web_page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


# ---------------------------------------------------------------------- the load test's client
def test_load_test_accounts_for_every_request(server, tts):
    from flexicodec.benchmarks.serve_load import classify, reference_digests, run_phase
    reqs = [{"model": "flexicodec", "input": t, "voice": "alice", "seed": i,
             "response_format": "wav"} for i, t in enumerate(["Hello there.", "One two."])]
    ref = reference_digests(server.url, reqs)
    with live(tts, workers=1, queue_size=1) as srv:
        ph = run_phase(srv.url, reqs, ref, clients=4, total=10, max_seconds=60, backoff=0.05)
    assert ph["issued"] == 10 and ph["lost"] == 0 and ph["error"] == 0
    assert ph["corrupted"] == 0 and ph["ok"] + ph["rejected"] == 10 and ph["ok"] >= 2
    assert 0 < ph["ttfb_p50_s"] <= ph["ttlb_p50_s"] and ph["audio_s"] > 0
    # a body that differs from the reference is corruption; a 503 without Retry-After or a
    # broken stream is an error
    assert classify({"status": 200, "sha256": "x", "index": 0}, {0: "y"}) == "corrupted"
    assert classify({"status": 503, "index": 0}, ref) == "error"
    assert classify({"status": 503, "retry_after": "2", "index": 0}, ref) == "rejected"
    assert classify({"status": 200, "error": "RemoteProtocolError", "index": 0}, ref) == "error"


def test_serve_command_with_the_shipped_models(tmp_path):
    """What a new user runs: `flexicodec-tts serve` (here `python -m flexicodec.tts.cli serve`) loads
    the shipped models once; the page is up and the openai client gets speech."""
    from flexicodec.benchmarks.serve_load import free_port, start_server
    port = free_port("127.0.0.1")
    proc = start_server("127.0.0.1", port, None, 1, 2, str(tmp_path / "voices"),
                        tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert "Synthesize" in httpx.get(url + "/").text
        voices = httpx.get(url + "/v1/voices").json()["data"]
        assert len(voices) > 50 and {"name": "flite_slt", "type": "builtin"} in voices
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        wav = client.audio.speech.create(model="tts-1", voice="flite_slt", input="Hello there.",
                                         response_format="wav", extra_body={"seed": 0}).content
        x = wav_samples(wav)
        assert x.size > 0.3 * SR and np.abs(x).max() > 300     # audible, not silence
    finally:
        proc.terminate()
        proc.wait(30)
