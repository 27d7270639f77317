"""The HTTP speech server: an OpenAI-compatible speech endpoint, saved voices, a web page.

    flexicodec-tts serve [--host 127.0.0.1] [--port 8000] [--model DIR] [--voices DIR]
                         [--workers N] [--queue-size N] [--api-key KEY]

Endpoints (JSON errors have OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``):

- ``POST /v1/audio/speech``: ``{"model", "input", "voice", "response_format": wav | pcm |
  flac, "speed" (1.0 only), "stream_format": audio | sse}`` as in OpenAI's API, plus this
  project's ``frame_rate`` or ``threshold`` and ``seed``. The body streams as the pipeline
  produces audio (wav and pcm; flac is sent when complete). ``stream_format=sse`` sends
  ``speech.audio.delta`` events (base64 audio) and a final ``speech.audio.done`` with the
  usage and, per sentence, the merged tokens' lengths (``segments``).
- ``GET /v1/voices``, ``POST /v1/voices`` (multipart ``name``, ``text``, ``wav``),
  ``DELETE /v1/voices/{name}``: shipped speakers and saved voices (:mod:`flexicodec.tts.voices`).
- ``POST /v1/plot`` (multipart ``wav``, ``segments``): the merged-token picture (PNG).
- ``GET /v1/models``, ``GET /health``, ``GET /`` (the web page).

Work runs on a fixed pool of worker threads behind a bounded queue (:mod:`flexicodec.tts.workers`):
a full queue answers 503 with ``Retry-After``. A client that disconnects stops its job.
With an API key every ``/v1/`` request needs ``Authorization: Bearer KEY``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.lm.cache_modes import add_lm_cache_flag
from flexicodec.tts.audio_stream import MEDIA_TYPES, StreamEncoder
from flexicodec.tts.workers import QueueFullError, WorkerPool

log = logging.getLogger("flexicodec.serve")

MODEL_ID = "flexicodec"
#: OpenAI's speech model names, accepted so that code written for them runs unchanged
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
API_KEY_ENV = "FLEXICODEC_API_KEY"
#: longest audio /v1/plot draws (seconds)
MAX_PLOT_SECONDS = 300.0


@dataclass
class ServerConfig:
    """Limits of one server. ``max_upload_bytes`` bounds a voice prompt or plot upload; a
    client that reads nothing for ``stall_s`` seconds while ``max_pending_chunks`` chunks
    wait for it loses its job (and frees the worker)."""

    workers: int = 1
    queue_size: int = 4
    max_input_chars: int = 4096
    max_upload_bytes: int = 16 * 2**20
    max_pending_chunks: int = 64
    stall_s: float = 60.0
    api_key: str | None = None


class VoiceRef(BaseModel):
    """OpenAI's object form of ``voice``: ``{"id": NAME}``."""

    model_config = ConfigDict(extra="forbid")
    id: str


class SpeechRequest(BaseModel):
    """The body of ``POST /v1/audio/speech`` (unknown fields are an error)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    input: str
    voice: str | VoiceRef
    response_format: str = "wav"
    speed: float | None = None
    instructions: str | None = None
    stream_format: str = "audio"
    frame_rate: float | None = None
    threshold: float | None = None
    seed: int | None = None


class APIError(Exception):
    """An error response: HTTP ``status`` with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


def api_error(exc: BaseException) -> APIError:
    """The response for an exception raised by the pipeline, the voice store or the pool."""
    from flexicodec.data.audio import AudioError
    from flexicodec.tts.pipeline import TTSError, UnknownSpeakerError
    from flexicodec.tts.voices import VoiceError, VoiceExistsError, VoiceNameError, VoiceNotFoundError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(503, str(exc), "server_busy",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, VoiceNameError):
        return APIError(400, str(exc), "invalid_voice_name", "voice")
    if isinstance(exc, (VoiceNotFoundError, UnknownSpeakerError)):
        return APIError(404, str(exc), "voice_not_found", "voice")
    if isinstance(exc, VoiceExistsError):
        return APIError(409, str(exc), "voice_exists", "name")
    if isinstance(exc, VoiceError):
        return APIError(409, str(exc), "voice_unusable", "voice")
    if isinstance(exc, AudioError):
        return APIError(422, str(exc), "invalid_audio", "wav")
    if isinstance(exc, TTSError):
        return APIError(422, str(exc), "invalid_input")
    log.error("internal error: %r", exc, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", "internal_error")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def page_html() -> str:
    return resources.files("flexicodec.tts").joinpath("web/index.html").read_text(encoding="utf-8")


def create_app(tts, config: ServerConfig | None = None):
    """The FastAPI app serving ``tts`` (a :class:`flexicodec.tts.pipeline.TTS`, loaded once; its
    ``voices`` store, if any, holds the saved voices)."""
    from flexicodec.tts.voices import add_voice, check_name

    config = config or ServerConfig()
    pool = WorkerPool(config.workers, config.queue_size, config.max_pending_chunks,
                      config.stall_s)

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(title="FlexiCodec TTS", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.pool = pool
    app.state.tts = tts

    def error_response(err: APIError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" or tuple(e.get("loc", ())) == ("body",)
               for e in errors):
            return error_response(APIError(422, "the request body must be a JSON object "
                                                "(Content-Type: application/json)",
                                           "invalid_json"))
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: "
                        f"{e.get('msg')}" for e in errors) or "invalid request"
        return error_response(APIError(422, msg, "invalid_request",
                                       ".".join(loc) or None))

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return error_response(APIError(exc.status_code, str(exc.detail), None))

    upload_paths = ("/v1/voices", "/v1/plot")

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        """POST bodies need a Content-Length within the limit (memory stays bounded)."""
        if request.method == "POST":
            limit = (config.max_upload_bytes if request.url.path in upload_paths
                     else 4 * config.max_input_chars) + 64 * 1024
            length = request.headers.get("content-length", "")
            if not length.isdigit():
                return error_response(APIError(411, "a request body needs a Content-Length "
                                                    "header", "length_required"))
            if int(length) > limit:
                return error_response(APIError(413, f"request body is {int(length)} bytes; "
                                                    f"the limit is {limit}", "body_too_large"))
        return await call_next(request)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if config.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), config.api_key.encode()):
                return error_response(APIError(
                    401, "missing or wrong API key (Authorization: Bearer KEY)",
                    "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        return await call_next(request)

    # ------------------------------------------------------------------ helpers
    async def first_item(job, request: Request):
        """The job's first item, or its error as an APIError; cancels the job when the
        client goes away while it waits in the queue."""
        task = asyncio.ensure_future(job.get())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    job.cancel()
                    raise APIError(499, "client closed the request", "client_closed")
        except StopAsyncIteration:
            raise APIError(500, "the job produced no output", "internal_error")
        except APIError:
            raise
        except Exception as exc:
            raise api_error(exc) from exc
        finally:
            if not task.done():
                task.cancel()
                job.cancel()

    async def run_job(fn: Callable[[], Iterator[Any]], request: Request):
        """Run a one-item job on the pool and return its item."""
        try:
            job = pool.submit(fn)
        except QueueFullError as exc:
            raise api_error(exc) from exc
        return await first_item(job, request)

    async def read_upload_form(request: Request, fields: tuple[str, ...], file_field: str):
        """Parse a bounded multipart form → (dict of text fields, (filename, bytes))."""
        try:
            form = await request.form(max_files=1, max_fields=len(fields) + 1)
        except Exception as exc:
            raise APIError(422, f"not a valid multipart form ({exc})", "invalid_form") from exc
        try:
            out = {}
            for name in fields:
                value = form.get(name)
                if not isinstance(value, str):
                    raise APIError(422, f"form field {name!r} is required", "missing_field",
                                   name)
                out[name] = value
            upload = form.get(file_field)
            if upload is None or isinstance(upload, str):
                raise APIError(422, f"file field {file_field!r} is required", "missing_field",
                               file_field)
            data = await upload.read(config.max_upload_bytes + 1)
        finally:
            await form.close()   # its spooled temporary files
        if len(data) > config.max_upload_bytes:
            raise APIError(413, f"upload is over the limit of {config.max_upload_bytes} "
                                f"bytes", "upload_too_large", file_field)
        if not data:
            raise APIError(422, "the uploaded file is empty", "invalid_audio", file_field)
        return out, (upload.filename or "", data)

    def read_wav_bytes(data: bytes, max_seconds: float):
        from flexicodec.data.audio import AudioError, load_audio
        with tempfile.NamedTemporaryFile(suffix=".audio") as f:
            f.write(data)
            f.flush()
            try:
                return load_audio(f.name, SAMPLE_RATE, max_seconds=max_seconds)[0]
            except AudioError as exc:  # the temporary name means nothing to the client
                raise AudioError(str(exc).replace(f.name, "upload")) from exc

    def voice_name(req) -> str:
        name = req.voice.id if not isinstance(req.voice, str) else req.voice
        if name not in tts.speakers:
            check_name(name)
            if tts.voices is None or not tts.voices.exists(name):
                raise APIError(404, f"unknown voice {name!r}: GET /v1/voices lists the "
                                    f"shipped speakers and saved voices", "voice_not_found",
                               "voice")
        return name

    # ------------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page_html())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": MODEL_ID, "sample_rate": SAMPLE_RATE,
                "auth": bool(config.api_key), **pool.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": MODEL_ID}
                                           for m in (MODEL_ID, *MODEL_ALIASES)]}

    @app.post("/v1/audio/speech")
    async def speech(req: SpeechRequest, request: Request):
        if req.model not in (MODEL_ID, *MODEL_ALIASES):
            raise APIError(404, f"unknown model {req.model!r}; this server has "
                                f"{', '.join((MODEL_ID, *MODEL_ALIASES))}", "model_not_found",
                           "model")
        if len(req.input) > config.max_input_chars:
            raise APIError(413, f"input is {len(req.input)} characters; the limit is "
                                f"{config.max_input_chars}", "input_too_long", "input")
        if not req.input.strip():
            raise APIError(422, "input is empty: nothing to synthesize", "empty_input", "input")
        if req.response_format not in MEDIA_TYPES:
            raise APIError(400, f"response_format {req.response_format!r} is not supported; "
                                f"use one of {', '.join(MEDIA_TYPES)}",
                           "unsupported_response_format", "response_format")
        if req.stream_format not in ("audio", "sse"):
            raise APIError(400, f"stream_format must be 'audio' or 'sse', got "
                                f"{req.stream_format!r}", "invalid_stream_format",
                           "stream_format")
        if req.speed is not None and req.speed != 1.0:
            raise APIError(400, "speed is not supported: the model speaks at the rate it "
                                "learned; omit speed or use 1.0", "unsupported_speed", "speed")
        if req.instructions is not None:
            raise APIError(400, "instructions are not supported by this model",
                           "unsupported_instructions", "instructions")
        if req.frame_rate is not None and req.threshold is not None:
            raise APIError(400, "give frame_rate or threshold, not both", "invalid_rate",
                           "frame_rate")
        try:
            speaker = voice_name(req)
        except Exception as exc:
            raise api_error(exc) from exc
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
        encoder = StreamEncoder(req.response_format)
        sse = req.stream_format == "sse"
        text = req.input

        def event(obj: dict) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def produce() -> Iterator[bytes]:
            segments: list = []
            for chunk in tts.stream(text, speaker=speaker, frame_rate=req.frame_rate,
                                    threshold=req.threshold, seed=seed, segments=segments):
                data = encoder.encode(chunk)
                if data:
                    yield event({"type": "speech.audio.delta",
                                 "audio": base64.b64encode(data).decode()}) if sse else data
            tail = encoder.finish()
            if tail:
                yield event({"type": "speech.audio.delta",
                             "audio": base64.b64encode(tail).decode()}) if sse else tail
            if sse:
                n_in = sum(len(tts.tokenizer.encode(s)) for s in tts.sentences(text))
                n_out = sum(len(s.token_lengths) for s in segments)
                yield event({"type": "speech.audio.done",
                             "usage": {"input_tokens": n_in, "output_tokens": n_out,
                                       "total_tokens": n_in + n_out},
                             "sample_rate": encoder.output_sample_rate, "seed": seed,
                             "segments": [{"start_s": s.start_sample / SAMPLE_RATE,
                                           "token_lengths": s.token_lengths}
                                          for s in segments]})

        try:
            job = pool.submit(produce)
        except QueueFullError as exc:
            raise api_error(exc) from exc
        first = await first_item(job, request)

        async def body():
            try:
                yield first
                while True:
                    try:
                        item = await job.get()
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                job.cancel()

        media = "text/event-stream" if sse else encoder.media_type
        headers = {"X-Seed": str(seed), "X-Sample-Rate": str(encoder.output_sample_rate),
                   "Cache-Control": "no-store"}
        return StreamingResponse(body(), media_type=media, headers=headers)

    @app.get("/v1/voices")
    async def list_voices():
        data = [{"name": n, "type": "builtin"} for n in tts.list_speakers()]
        for name in tts.list_voices():
            try:
                info = tts.voices.info(name)
            except Exception as exc:
                raise api_error(exc) from exc
            data.append({"name": name, "type": "saved", "text": info.get("text"),
                         "created": info.get("created"),
                         "frame_rates": info.get("frame_rates")})
        return {"object": "list", "data": data}

    @app.post("/v1/voices", status_code=201)
    async def create_voice(request: Request):
        from flexicodec.tts.pipeline import MAX_PROMPT_SECONDS
        if tts.voices is None:
            raise APIError(409, "this server has no voice store", "no_voice_store")
        fields, (filename, data) = await read_upload_form(request, ("name", "text"), "wav")
        name, text = fields["name"], fields["text"]
        try:
            check_name(name)
        except Exception as exc:
            raise api_error(exc) from exc

        def work():
            wav = read_wav_bytes(data, MAX_PROMPT_SECONDS)
            source = {"filename": Path(filename).name[:200], "bytes": len(data),
                      "seconds": round(wav.size / SAMPLE_RATE, 3)}
            yield add_voice(tts, name, (wav, SAMPLE_RATE), text, source)

        info = await run_job(work, request)
        return {"name": name, "type": "saved", "text": info["text"],
                "created": info["created"], "frame_rates": info["frame_rates"]}

    @app.delete("/v1/voices/{name:path}")
    async def delete_voice(name: str):
        try:
            check_name(name)
            if name in tts.speakers:
                raise APIError(409, f"{name!r} is a shipped speaker; it cannot be removed",
                               "builtin_voice", "name")
            if tts.voices is None:
                raise APIError(404, f"no saved voice {name!r}", "voice_not_found", "name")
            tts.voices.remove(name)
        except Exception as exc:
            raise api_error(exc) from exc
        return {"name": name, "deleted": True}

    @app.post("/v1/plot")
    async def plot(request: Request):
        from flexicodec.codec.eval.plot import render_groups_png
        fields, (_, data) = await read_upload_form(request, ("segments",), "wav")
        try:
            raw = json.loads(fields["segments"])
            segments = [(float(s["start_s"]), [int(n) for n in s["token_lengths"]])
                        for s in raw]
        except (ValueError, TypeError, KeyError) as exc:
            raise APIError(422, f"segments must be a JSON list of {{start_s, token_lengths}} "
                                f"({exc})", "invalid_segments", "segments") from exc
        max_group = int(tts.codec.max_group)
        for start, lengths in segments:
            if not math.isfinite(start) or start < 0 or any(
                    not 1 <= n <= max_group for n in lengths):
                raise APIError(422, f"segments need start_s >= 0 and token lengths in "
                                    f"[1, {max_group}]", "invalid_segments", "segments")

        def work():
            wav = read_wav_bytes(data, MAX_PLOT_SECONDS)
            end = max((s + sum(ls) / BASE_FRAME_RATE for s, ls in segments), default=0.0)
            if end > wav.size / SAMPLE_RATE + 0.2:
                raise APIError(422, f"segments end at {end:.2f} s, after the audio "
                                    f"({wav.size / SAMPLE_RATE:.2f} s)", "invalid_segments",
                               "segments")
            yield render_groups_png(wav, segments, SAMPLE_RATE, float(tts.codec.frame_rate_base))

        png = await run_job(work, request)
        return Response(png, media_type="image/png")

    return app


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flexicodec-tts serve",
                                 description="HTTP speech server (OpenAI-compatible "
                                             "/v1/audio/speech, saved voices, a web page at /)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; any non-loopback address "
                         "needs an API key)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", help="directory with codec/, lm/, acoustic/ (default: the "
                                    "shipped models)")
    ap.add_argument("--voices", help="saved-voices directory (default: $FLEXICODEC_VOICES or "
                                     "~/.local/share/flexicodec/voices)")
    ap.add_argument("--workers", type=int, default=1, help="synthesis worker threads")
    add_lm_cache_flag(ap)
    ap.add_argument("--queue-size", type=int, default=4,
                    help="requests that may wait for a worker; more get 503 + Retry-After")
    ap.add_argument("--max-input-chars", type=int, default=ServerConfig.max_input_chars)
    ap.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1/ (default: "
                                      f"${API_KEY_ENV})")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    api_key = a.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(a.host) and not api_key:
        print(f"error: binding to {a.host} (not a loopback address) needs an API key: pass "
              f"--api-key KEY or set {API_KEY_ENV}", file=sys.stderr)
        return 2
    if a.workers < 1 or a.queue_size < 0 or a.max_input_chars < 1:
        ap.error("--workers >= 1, --queue-size >= 0 and --max-input-chars >= 1 are required")
    import torch
    import uvicorn

    from flexicodec.tts.pipeline import TTS
    from flexicodec.tts.voices import VoiceStore, default_voices_dir

    threads = max(1, (os.cpu_count() or 1) // a.workers)
    torch.set_num_threads(threads)
    voices = VoiceStore(a.voices or default_voices_dir())
    try:
        tts = TTS.from_pretrained(a.model, voices=voices)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: cannot load the TTS models: {exc}", file=sys.stderr)
        return 2
    tts.options.lm_cache = a.lm_cache
    config = ServerConfig(workers=a.workers, queue_size=a.queue_size,
                          max_input_chars=a.max_input_chars, api_key=api_key)
    log.info("models loaded; %d shipped speakers, %d saved voices in %s; %d worker(s) x %d "
             "torch thread(s), queue %d", len(tts.speakers), len(tts.list_voices()),
             voices.directory, a.workers, threads, a.queue_size)
    host = f"[{a.host}]" if ":" in a.host else a.host
    log.info("open http://%s:%d/ for the web page", host, a.port)
    uvicorn.run(create_app(tts, config), host=a.host, port=a.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
