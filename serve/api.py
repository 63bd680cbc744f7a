"""The HTTP ingress: the native ``/v1/analyze``, OpenAI-compatible chat completions, health, and the demo page.

Guards, in order: the body size cap on the bytes received (413) and the API key (401) in a
middleware, then request parsing where every client mistake is a
:class:`~serve.inputs.RequestError` (4xx, OpenAI's JSON error shape), and around every call
into the face and model deployments (:meth:`EmolaAPI._call`): a timeout (504), a prompt too
long for the model's context (400), every replica busy and the queue full (503 with
``Retry-After``), and a replica that died under the call (repeated at most once, and never
when the request is the likely cause: 500 or 503). A replica that fails a request keeps
serving the next one. Anything unexpected is a 500 naming an incident id; tracebacks and
exception text stay in the replica's log.
"""


import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from emola.labels import EVAL_QUESTIONS
from emola.engine import PromptTooLong
from emola.metrics.rege_parsers import aus_of, emotion_of
from emola.video import VideoLimits, VideoProblem, looks_like_video, probe
from serve.inputs import (RequestError, b64_bytes, decode_upload, image_url_bytes, last_user_turn, video_error,
                          video_options)
from serve.landmarks import NO_FACE_NEEDED, cached_face

logger = logging.getLogger("ray.serve")
API_KEY_ENV = "EMOLA_API_KEY"
OPEN_PATHS = ("/", "/healthz", "/readyz", "/static/")   # probes and the page; the page sends the key itself
PAGE = Path(__file__).parent / "static" / "index.html"
TASKS = ("emotion", "au", "both")

app = FastAPI(title="EmoLA", description="Facial affective behaviour analysis with EmoLA", version="1")


def _version(info: dict) -> dict:
    """Which model version answered, from a model deployment's ``info``."""
    return {k: info.get(k) for k in ("reference", "registry_name", "registry_version", "training_run", "mlflow_run_id")}


def _usage(out: dict) -> dict:
    """OpenAI ``usage`` from a model output: tokens of the served model's own tokenizer.

    The prompt count includes the template, the image tokens and the prior token.
    """
    return {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
            "total_tokens": out["prompt_tokens"] + out["completion_tokens"]}


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers)


@app.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return _error(err)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(RequestError(400, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return _error(RequestError(err.status_code, "http_error", str(err.detail)))


@app.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    """Anything unexpected: a 500 with an id to quote; the traceback goes to the replica's log, never to the client."""
    incident = uuid.uuid4().hex[:12]
    logger.error("internal error %s on %s %s", incident, request.method, request.url.path, exc_info=err)
    return _error(RequestError(500, "internal_error", f"internal error (incident {incident})"))


class Guards:
    """The body size cap (413) and the API key (401), before any route runs.

    The cap holds on the bytes actually received, whatever the headers say: a declared
    ``Content-Length`` over the cap is refused at once, and every body (chunked ones have no
    length to check) is counted as the route reads it; the read that passes the cap raises
    :class:`BodyTooLarge` (a 413) before the chunk is buffered anywhere.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each
    request through a task group and two memory streams, a tenth of the ingress's CPU time
    per request in ``benchmarks/serve.py``.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (error := _guard(scope)) is not None:
            await _error(error)(scope, receive, send)
            return
        await self.app(scope, _capped(receive, scope["app"].state.settings["max_body_bytes"]), send)


class BodyTooLarge(RequestError):
    def __init__(self, cap: int):
        super().__init__(413, "body_too_large", f"request body exceeds the cap of {cap} bytes")


def _capped(receive, cap: int):
    """``receive`` that counts body bytes and raises :class:`BodyTooLarge` past ``cap``."""
    size = 0

    async def capped_receive():
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > cap:
                raise BodyTooLarge(cap)
        return message

    return capped_receive


def _guard(scope) -> RequestError | None:
    """Why the request in ``scope`` is refused before its route runs, or None."""
    settings = scope["app"].state.settings
    headers = Headers(scope=scope)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 20:
            return RequestError(400, "bad_content_length", "Content-Length is not a number")
        if int(length) > settings["max_body_bytes"]:
            return RequestError(413, "body_too_large",
                                f"request body of {length} bytes exceeds the cap of {settings['max_body_bytes']}")
    if _needs_key(scope["path"]) and not _has_key(headers):
        return RequestError(401, "invalid_api_key", "missing or wrong API key: send Authorization: Bearer <key>")
    return None


def _needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and not path.startswith("/static/")


def _has_key(headers: Headers) -> bool:
    """Whether the request carries the API key (always true when the server has none)."""
    expected = os.environ.get(API_KEY_ENV)
    if not expected:
        return True
    given = headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    # Constant-time: a wrong key takes as long to reject as an almost-right one.
    return hmac.compare_digest(token.encode(), expected.encode())


app.add_middleware(Guards)


def _json(body: bytes) -> dict:
    if not body:
        raise RequestError(400, "empty_body", "empty request body: send JSON")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, "malformed_json", f"malformed JSON: {err}") from None
    except (ValueError, RecursionError):   # an integer of thousands of digits, nesting past Python's stack
        raise RequestError(400, "malformed_json", "malformed JSON: a number too long or nesting too deep") from None
    if not isinstance(data, dict):
        raise RequestError(400, "malformed_json", "the JSON body must be an object")
    return data


@serve.deployment(name="EmolaAPI")
@serve.ingress(app)
class EmolaAPI:
    def __init__(self, faces, models: dict, settings: dict):
        """``models``: part name -> model deployment handle (one part named "" for a joint model).

        Per-request calls (an image, a question, a prior vector; an answer back) go over Serve's
        gRPC transport between replicas (``_by_reference=False``): a fifth less CPU per request than
        a Ray actor call, measured in ``benchmarks/serve.py``. Payloads that may be large (every
        cached face, an uploaded video) stay on Ray's object store; :func:`serve.app.deployment_options`
        lets the replicas' gRPC servers take any request body ``serve.max_body_bytes`` allows.
        """
        self.faces, self.models, self.settings = faces, models, settings
        self.detector = faces.options(_by_reference=False)
        self.generators = {part: handle.options(_by_reference=False) for part, handle in models.items()}
        app.state.settings = settings
        self.part_info: dict[str, dict] | None = None
        self._in_flight: dict[str, dict[str, int]] = {}   # deployment call kind -> request id -> open calls
        self._known: asyncio.Future | None = None   # the face deployment's known faces, asked once

    # ---------------------------------------------------------------- helpers
    async def _call(self, make, what: str, request: str = ""):
        """Await ``make()`` (a deployment call); see the module docstring for what becomes which status.

        A replica that died under the call is survived at most once per request: ``make`` is called
        again only when other requests were in flight to the same deployment when it died (the
        death may be theirs, or the node's). A request that was alone there is the likely cause,
        and so is one whose repeat died too: neither is sent again (a poison request takes down at
        most two replicas, not every replica it is retried on), and the answer says so. Until
        Serve's router learns of the death it may pick the dead replica again, so the repeat waits
        a moment first.
        """
        timeout = self.settings["request_timeout_s"]
        retry = {"Retry-After": "1"}
        flight = self._in_flight.setdefault(what, {})
        for attempt in (1, 2):
            if attempt > 1:
                await asyncio.sleep(0.25)
            flight[request] = flight.get(request, 0) + 1
            others = len(flight) - 1   # other requests with a call to this deployment open now
            try:
                return await asyncio.wait_for(make(), timeout=timeout)
            except asyncio.TimeoutError:
                raise RequestError(504, "timeout", f"{what} took longer than {timeout} s") from None
            except PromptTooLong as err:
                raise RequestError(400, "context_length_exceeded", str(err)) from None
            except BackPressureError:
                raise RequestError(503, "overloaded", f"{what}: every replica is busy and its queue is full; "
                                   "retry later", retry) from None
            except RayActorError:
                others = max(others, len(flight) - 1)
                logger.warning("%s: a replica died under request %s (attempt %d, %d other requests in flight)",
                               what, request, attempt, others)
                if attempt == 2:
                    raise RequestError(503, "replica_unavailable", f"{what}: the replica serving this request "
                                       "stopped, and so did the one it was repeated on; it is not repeated "
                                       "again", retry) from None
                if others == 0:
                    raise RequestError(500, "replica_crashed", f"{what}: the replica serving this request stopped "
                                       "while it was the only request there; it is the likely cause and is not "
                                       "repeated") from None
            finally:
                flight[request] -= 1
                if not flight[request]:
                    del flight[request]

    def _model_id(self, part: str) -> str:
        return f"{self.settings['model_name']}-{part}" if part else self.settings["model_name"]

    async def _parts(self) -> dict[str, dict]:
        """Part name -> the checkpoint it serves (with its ``tasks``), asked once."""
        if self.part_info is None:
            infos = await asyncio.gather(*[self._call(m.info.remote, "model info") for m in self.generators.values()])
            self.part_info = dict(zip(self.models, infos))
        return self.part_info

    async def _part_for_task(self, task: str) -> str:
        for part, info in (await self._parts()).items():
            if task in info["tasks"]:
                return part
        raise RequestError(400, "task_not_served", f"task: no served model was trained for {task!r}")

    async def _part_for_model(self, model_id) -> str:
        """The part a chat request names with OpenAI's ``model``; a single model answers any name."""
        parts = await self._parts()
        ids = {self._model_id(part): part for part in parts}
        if model_id in ids:
            return ids[model_id]
        if len(parts) == 1:
            return next(iter(parts))
        raise RequestError(404, "model_not_found", f"model: {str(model_id)[:80]!r} is not one of {', '.join(ids)}")

    async def _known_faces(self) -> dict:
        """:meth:`~serve.landmarks.LandmarkDetector.known`, asked once (concurrent first requests share the call;
        a failed call is asked again by the next request)."""
        failed = self._known is not None and self._known.done() and (
            self._known.cancelled() or self._known.exception() is not None)
        if self._known is None or failed:
            self._known = asyncio.ensure_future(self._call(self.faces.known.remote, "landmark cache"))
        return await asyncio.shield(self._known)

    async def _face(self, image, rid: str) -> dict:
        """The face and prior of ``image``: answered here when the face deployment has it cached (or the models
        need none), else detected there."""
        started = time.perf_counter()
        known = await self._known_faces()
        if not known["needs_face"]:
            return dict(NO_FACE_NEEDED)
        if (hit := known["faces"].get(image.sha256)) is not None:
            return cached_face(hit, known["source"], started)
        face = await self._call(lambda: self.detector.detect.remote(image.wire, image.sha256), "face detection", rid)
        if face["status"] == "no_face":
            raise RequestError(422, "no_face", f"no face found in the image ({face['reason']})")
        if face["status"] != "ok":
            raise RequestError(422, f"face_{face['status']}", f"face detection failed: {face['reason']}")
        return face

    def _generation(self, max_tokens=None, temperature=None, top_p=None, seed=None) -> dict:
        base = self.settings["generation"]
        generation = {"max_new_tokens": base["max_new_tokens"] if max_tokens is None else max_tokens,
                      "temperature": base["temperature"] if temperature is None else temperature,
                      "top_p": base["top_p"] if top_p is None else top_p,
                      "seed": base.get("seed", 0) if seed is None else seed}
        if not (isinstance(generation["max_new_tokens"], int) and 1 <= generation["max_new_tokens"] <= 2048):
            raise RequestError(400, "invalid_max_tokens", "max_tokens: an integer from 1 to 2048")
        if not (isinstance(generation["temperature"], (int, float)) and 0 <= generation["temperature"] <= 2):
            raise RequestError(400, "invalid_temperature", "temperature: a number from 0 to 2")
        if not (isinstance(generation["top_p"], (int, float)) and 0 < generation["top_p"] <= 1):
            raise RequestError(400, "invalid_top_p", "top_p: a number in (0, 1]")
        if not (isinstance(generation["seed"], int) and 0 <= generation["seed"] < 2**31):
            raise RequestError(400, "invalid_seed", "seed: an integer from 0 to 2^31 - 1")
        return generation

    # ---------------------------------------------------------------- routes
    @app.get("/", include_in_schema=False)
    async def page(self):
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self, request: Request):
        """``ready`` or ``not_ready`` to anyone (a probe needs no key); what is served and why it is not ready only
        with the API key: checkpoint paths, run ids and exception text are not for anonymous callers."""
        try:
            infos = await asyncio.wait_for(asyncio.gather(*[m.info.remote() for m in self.generators.values()]),
                                           timeout=5)
            faces = await asyncio.wait_for(self.detector.info.remote(), timeout=5)
        except Exception as err:  # noqa: BLE001 - not ready, whatever the reason; the probe says why to the key holder
            logger.warning("not ready: %s: %s", type(err).__name__, err)
            body = {"status": "not_ready"}
            if _has_key(request.headers):
                body["reason"] = f"{type(err).__name__}: {err}"
            return JSONResponse(body, status_code=503)
        if not _has_key(request.headers):
            return {"status": "ready"}
        return {"status": "ready", "model": infos[0], "models": dict(zip(self.models, infos)), "faces": faces}

    @app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self._model_id(part), "object": "model", "created": 0,
                                            "owned_by": "emola", "tasks": info["tasks"], "checkpoint": info}
                                           for part, info in (await self._parts()).items()]}

    @app.post("/v1/analyze")
    async def analyze(self, request: Request) -> dict:
        """Multipart (``file``, optional ``task``) or JSON (``image`` as base64 or data URL, ``task``).

        Named steps: read the request, decode the image, find the face and its prior, describe
        it per task (each task on its model, concurrently), answer. A video (a ``video`` part or
        JSON key, a ``video/*`` upload, or bytes that start like a video container) goes to
        :meth:`_analyze_video`."""
        started = time.perf_counter()
        rid = uuid.uuid4().hex
        data, task, video_fields = await self._analysis_request(request)
        if video_fields is not None:
            return await self._analyze_video(data, video_fields, started, rid)
        t0 = time.perf_counter()
        image = decode_upload(data, self.settings["max_image_pixels"])
        t1 = time.perf_counter()
        face = await self._face(image, rid)
        tasks = ["emotion", "au"] if task == "both" else [task]
        results, generate_ms = await self._describe(tasks, image, face, rid)
        return {
            "id": f"analyze-{uuid.uuid4().hex[:16]}", "model": self.settings["model_name"],
            "model_version": results[tasks[0]]["model_version"],   # each result names its own model too
            "task": task, "image_sha256": image.sha256,
            "width": int(image.pixels.shape[1]), "height": int(image.pixels.shape[0]),
            "face": face["face"], "landmark_source": face["source"],
            "emotion": results.get("emotion", {}).get("emotion"), "aus": results.get("au", {}).get("aus"),
            "results": results,
            "timings_ms": {"decode": round(1e3 * (t1 - t0), 2), "landmarks": face["ms"], "generate": generate_ms,
                           "total": round(1e3 * (time.perf_counter() - started), 2)},
        }

    async def _analysis_request(self, request: Request) -> tuple[bytes, str, dict | None]:
        """The bytes and the task of a multipart or JSON analysis request (4xx when malformed), and for a
        video the request's fields (its options), else None."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=4, max_fields=16, max_part_size=self.settings["max_body_bytes"])
            upload = form.get("video") or form.get("file") or form.get("image")
            if upload is None or isinstance(upload, str):
                raise RequestError(400, "missing_file", "multipart body without a 'file' (or 'video') part")
            data, task = await upload.read(), str(form.get("task") or "both")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            is_video = (form.get("video") is not None or (upload.content_type or "").startswith("video/")
                        or looks_like_video(data))
        else:
            payload = _json(await request.body())   # Guards caps what is read
            media = payload.get("video", payload.get("image"))
            if not isinstance(media, str) or not media:
                raise RequestError(400, "missing_image", "JSON body needs 'image' (or 'video'): base64 bytes or a "
                                                         "data URL")
            if media.startswith("data:video/"):
                data = b64_bytes(media.partition(",")[2], "video")
            else:
                data = (image_url_bytes(media, allow_remote=False, max_bytes=self.settings["max_body_bytes"],
                                        timeout_s=1) if media.startswith("data:") else b64_bytes(media))
            task, fields = payload.get("task", "both"), payload
            is_video = "video" in payload or looks_like_video(data)
        if task not in TASKS:
            raise RequestError(400, "invalid_task", f"task: {str(task)[:40]!r} is not one of {', '.join(TASKS)}")
        return data, task, (fields if is_video else None)

    async def _analyze_video(self, data: bytes, fields: dict, started: float, rid: str) -> dict:
        """Named steps: the options, the upload's limits (probed here, 4xx before any model work), the part
        with a readout head, per-frame analysis on its replica, answer."""
        video = self.settings["video"]
        options = video_options(fields, video["options"])
        if fields.get("task") in ("emotion", "au"):   # the question asked at key moments ("both": the params')
            options["task"] = fields["task"]
        limits = VideoLimits(**video["limits"])
        t0 = time.perf_counter()
        try:
            info = await asyncio.to_thread(probe, data, limits)
        except VideoProblem as err:
            raise video_error(err.code, str(err)) from None
        probe_ms = round(1e3 * (time.perf_counter() - t0), 2)
        infos = await self._parts()
        parts = [part for part, part_info in infos.items() if part_info.get("readout")]
        if not parts:
            raise RequestError(400, "video_not_supported", "video: the served model has no readout head for "
                               "per-frame probabilities (train it with train.readout_weight > 0); send an image")
        part = parts[0]
        generation = self._generation()
        out = await self._call(lambda: self.models[part].analyze_video.remote(
            data, {**options, "limits": video["limits"], "generation": generation}), "video analysis", rid)
        if "error" in out:
            raise video_error(out["error"]["code"], out["error"]["message"])
        rows = out["rows"]
        return {
            "id": f"analyze-{uuid.uuid4().hex[:16]}", "object": "video.analysis", "model": self._model_id(part),
            "model_version": _version(infos[part]),
            "video": {"width": info.width, "height": info.height, "rotation": info.rotation,
                      "duration_s": info.duration_s, "fps": info.average_fps, "codec": info.codec},
            "options": options,
            "frames": len({r["frame"] for r in rows}),
            "faces": len({r["face_id"] for r in rows if r["face_id"] is not None}),
            "key_moments": [{k: r[k] for k in ("frame", "time_ms", "face_id", "emotion", "description")}
                            for r in rows if r["key_moment"]],
            "rows": rows,
            "timings_ms": {"probe": probe_ms, "analysis": out["ms"],
                           "total": round(1e3 * (time.perf_counter() - started), 2)},
        }

    async def _describe(self, tasks: list[str], image, face: dict, rid: str) -> tuple[dict, float]:
        """Each task's description from its model (concurrently), with the emotion or AUs parsed from it."""
        parts = [await self._part_for_task(t) for t in tasks]
        generation = self._generation()
        outputs = await asyncio.gather(*[
            self._call(lambda part=part, t=t: self.generators[part].generate.remote(
                {"question": EVAL_QUESTIONS[t], "image": image.wire, "prior": face["prior"], "generation": generation}),
                "generation", rid)
            for t, part in zip(tasks, parts)])
        infos = await self._parts()
        results = {}
        for t, part, out in zip(tasks, parts, outputs):
            results[t] = {"description": out["text"], "batch_size": out["batch_size"], "model": self._model_id(part),
                          "model_version": _version(infos[part])}
            if t == "emotion":
                results[t]["emotion"] = emotion_of(out["text"])
            else:
                results[t]["aus"] = sorted(aus_of(out["text"]))
        return results, max(o["generate_ms"] for o in outputs)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        rid = uuid.uuid4().hex
        payload = _json(await request.body())   # Guards caps what is read
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError(400, "invalid_messages", "messages: a non-empty list of message objects")
        if payload.get("n", 1) != 1:
            raise RequestError(400, "unsupported_n", "n: only 1 is supported")
        part = await self._part_for_model(payload.get("model"))
        turn = last_user_turn(messages)
        generation = self._generation(payload.get("max_tokens", payload.get("max_completion_tokens")),
                                      payload.get("temperature"), payload.get("top_p"), payload.get("seed"))
        data = image_url_bytes(turn.image_url, allow_remote=self.settings["allow_remote_images"],
                               max_bytes=self.settings["max_body_bytes"], timeout_s=self.settings["request_timeout_s"])
        image = decode_upload(data, self.settings["max_image_pixels"], "image_url")
        face = await self._face(image, rid)
        item = {"question": turn.question, "image": image.wire, "prior": face["prior"], "generation": generation}
        completion_id, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self._model_id(part)
        if payload.get("stream"):
            async def open_stream():
                pieces = self.generators[part].options(stream=True).stream.remote(item)
                await pieces.__anext__()   # accepted: a prompt too long for the context raises here, before any byte
                return pieces

            pieces = await self._call(open_stream, "generation", rid)
            return StreamingResponse(self._chat_stream(pieces, completion_id, created, model),
                                     media_type="text/event-stream")
        out = await self._call(lambda: self.generators[part].generate.remote(item), "generation", rid)
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                             "finish_reason": out["finish_reason"]}],
                "usage": _usage(out)}

    async def _chat_stream(self, pieces, completion_id: str, created: int, model: str):
        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        finish = {"finish_reason": "stop"}
        try:
            async for piece in pieces:
                if isinstance(piece, dict):   # the model's last message: why it stopped, token counts
                    finish = piece
                    continue
                yield chunk({"content": piece})
        except Exception as err:  # noqa: BLE001 - the status line is sent; report in-band like OpenAI does
            incident = uuid.uuid4().hex[:12]
            logger.error("stream %s failed (incident %s)", completion_id, incident, exc_info=err)
            message = f"generation failed (incident {incident})"
            yield f"data: {json.dumps({'error': {'message': message, 'code': 'stream_failed'}})}\n\n"
            return
        yield chunk({}, finish["finish_reason"])
        yield "data: [DONE]\n\n"
