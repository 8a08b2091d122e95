"""The HTTP side of ``vpt serve``, shared by both engines (LitServe, Ray Serve): FastAPI routes that check
a request, hand it to the model worker through ``Frontend.submit`` (the engine's queue and batching), and
turn the answer into JSON with the right status.

Endpoints (docs/serve.md has examples):

- ``POST /predict`` JSON ``{"task", "image" (base64), "top_k", "score_thresh"}`` or multipart (``task`` field,
  ``image`` file);
- Open Inference Protocol v2 (KServe / Triton / MLServer): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``GET /v2/models/{task}``, ``/v2/models/{task}/ready``, ``POST /v2/models/{task}/infer``
  (an image per element of a BYTES input: base64 in JSON, or raw with the binary-data extension), and the
  repository extension ``POST /v2/repository/index``, ``/v2/repository/models/{task}/load`` / ``unload``;
- ``GET /tasks``, ``PUT /tasks/{name}`` ``{"path": DIR}``, ``DELETE /tasks/{name}`` (admin: bearer token);
- ``GET /metrics`` (Prometheus text), ``GET /health``.

Client errors are never a 500: undecodable image 400, bad token 401, admin calls disabled / path outside
``--task-root`` 403, unknown task 404 (with the task list and the closest name), body or pixels over the
limits 413, wrong content type 415, malformed JSON or fields 422.
"""
import asyncio
import base64
import binascii
import difflib
import hmac
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional

from .images import DEFAULT_MAX_PIXELS, ImageInputError, check_pixels
from .metrics import Metrics

DEFAULT_MAX_BODY = 32 * 1024 * 1024  # bytes; --max-body-mb
MAX_TOP_K = 1000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_task_flags(items) -> Dict[str, str]:
    """``NAME=ARTIFACT`` strings (``--task``, Ray's ``tasks=``) -> {name: dir}; UserError naming the fix."""
    from ..errors import UserError
    tasks: Dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UserError(f"--task {item!r}: write NAME=ARTIFACT (e.g. pets=runs/pets/best)")
        if not NAME_RE.match(name) or name == "base":
            raise UserError(f"--task {item!r}: a task name is 1-64 letters, digits, '_', '-', '.' and not 'base'")
        if name in tasks:
            raise UserError(f"--task: duplicate task name {name!r} ({tasks[name]} and {path}); give each its own NAME")
        tasks[name] = path
    return tasks


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Frontend:
    """What the routes need: the task table, the limits, the admin rules and ``submit`` (one item to the
    model worker -> its answer dict)."""
    submit: Callable[[Dict[str, Any]], Awaitable[Dict[str, Any]]]
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # name -> task_info
    known_paths: Dict[str, str] = field(default_factory=dict)  # name -> artifact dir (OIP load after unload)
    admin_token: Optional[str] = None
    task_root: Optional[str] = None
    max_body: int = DEFAULT_MAX_BODY
    max_pixels: int = DEFAULT_MAX_PIXELS
    engine: str = "litserve"
    admin: bool = True  # False where the engine can't change tasks while serving (Ray: redeploy instead)
    metrics: Metrics = field(default_factory=Metrics)
    version: str = ""

    # --- checks ---------------------------------------------------------------------------------------------
    def task(self, name: str) -> Dict[str, Any]:
        if name in self.tasks:
            return self.tasks[name]
        close = difflib.get_close_matches(name, list(self.tasks), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HttpError(404, f"unknown task {name!r}{hint} Loaded tasks: {', '.join(sorted(self.tasks)) or 'none'}")

    def check_admin(self, authorization: Optional[str]) -> None:
        if not self.admin:
            raise HttpError(403, f"the {self.engine} engine serves the tasks it was deployed with; change them by "
                                 f"redeploying (serve run / serve deploy with new --task values)")
        if self.admin_token is None:
            raise HttpError(403, "admin calls are disabled; start vpt serve with --admin-token-file FILE to allow "
                                 "loading and dropping tasks while serving")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.admin_token.encode()):
            raise HttpError(401, "missing or wrong admin token; send 'Authorization: Bearer <the token in "
                                 "--admin-token-file>'", {"WWW-Authenticate": "Bearer"})

    def resolve_path(self, path: Any) -> str:
        """A PUT's artifact path -> its real path, which must lie under --task-root (no '..', no link out)."""
        if self.task_root is None:
            raise HttpError(403, "loading tasks by path needs --task-root DIR (the folder artifacts may be loaded "
                                 "from); restart vpt serve with it")
        if not isinstance(path, str) or not path.strip():
            raise HttpError(422, 'the body must be {"path": "DIR"}: an artifact folder under --task-root')
        if ".." in re.split(r"[\\/]+", path):
            raise HttpError(403, f"path {path!r} contains '..'; give a folder under --task-root without '..'")
        root = os.path.realpath(self.task_root)
        full = os.path.realpath(path if os.path.isabs(path) else os.path.join(root, path))
        inside = lambda p: p == root or p.startswith(root + os.sep)  # noqa: E731
        if not inside(full):
            raise HttpError(403, f"path {path!r} lies outside --task-root (or a link in it points outside); put "
                                 f"the artifact under {self.task_root}")
        if not os.path.isdir(full):
            raise HttpError(422, f"no artifact folder at {path!r} under --task-root")
        for entry in os.listdir(full):
            if not inside(os.path.realpath(os.path.join(full, entry))):
                raise HttpError(403, f"{os.path.join(path, entry)!r} is a link to outside --task-root; copy the "
                                     f"file into the artifact folder")
        return full

    async def read_body(self, request) -> bytes:
        """The request body, refused with 413 as soon as it passes --max-body-mb (Content-Length or streamed)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise HttpError(413, f"body of {int(length)} bytes is over the server's limit of {self.max_body} "
                                 f"(--max-body-mb); send a smaller image")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise HttpError(413, f"body is over the server's limit of {self.max_body} bytes (--max-body-mb); "
                                     f"send a smaller image")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # starlette's cache: request.form() / .json() read this instead of the spent stream
        return body

    async def read_json(self, request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, f"content type {ctype or 'none'!r} is not accepted here; send application/json")
        body = await self.read_body(request)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(422, f"malformed JSON ({e}); send a JSON object") from None

    # --- the model worker -------------------------------------------------------------------------------
    async def run(self, item: Dict[str, Any]) -> Dict[str, Any]:
        item = dict(item, t=time.time())
        ans = await self.submit(item)
        if "batch_id" in ans:
            self.metrics.batch_seen(ans["batch_id"], ans.get("batch_size", 0), ans.get("queue_s", 0.0))
        return ans

    async def predict_one(self, task: str, image: bytes, top_k: int, score_thresh: Optional[float]) -> Dict[str, Any]:
        try:
            check_pixels(image, self.max_pixels)  # 413 for a bomb before it is queued
        except ImageInputError as e:
            raise HttpError(e.status, str(e)) from None
        ans = await self.run({"op": "predict", "task": task, "image": image, "top_k": top_k,
                              "score_thresh": score_thresh, "max_pixels": self.max_pixels})
        if ans.get("status") != 200:
            raise HttpError(int(ans.get("status", 500)), ans.get("error", "failed"))
        return {k: v for k, v in ans.items() if k in ("task", "predictions", "detections")}


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise HttpError(422, f"{what} must be a base64 string of an image file's bytes")
    if value.startswith("data:") and "," in value:  # a data URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(422, f"{what} is not valid base64; encode the image file's bytes with base64") from None


def _top_k(value: Any, where: str = "top_k") -> int:
    if value is None:
        return 5
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise HttpError(422, f"{where} must be an integer in [1, {MAX_TOP_K}], got {value!r}")
    return value


def _thresh(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise HttpError(422, f"score_thresh must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_keys(body: Dict[str, Any], allowed, where: str) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise HttpError(422, f"unknown field(s) {extra} in {where}; allowed: {sorted(allowed)}")


def build_routes(app, fe: Frontend, health: bool = True) -> None:
    """Add every vpt route to the FastAPI ``app``; errors become JSON ``{"error": ...}`` with their status."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    def route(path: str, methods: List[str], endpoint_name: str):
        def wrap(fn):
            async def handler(request: Request):
                start = time.monotonic()
                task = request.path_params.get("task") or request.path_params.get("name") or ""
                try:
                    res = await fn(request)
                    status = res.status_code if isinstance(res, Response) else 200
                    if not isinstance(res, Response):
                        res = JSONResponse(res)
                    task = getattr(request.state, "task", task)
                except HttpError as e:
                    status = e.status
                    res = JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
                    task = getattr(request.state, "task", task)
                if task and task not in fe.tasks and status == 404:
                    task = ""  # unknown names are not label values (unbounded cardinality)
                fe.metrics.request(task if endpoint_name not in ("metrics", "tasks", "health") else "",
                                   endpoint_name, status, time.monotonic() - start)
                return res
            handler.__annotations__ = {"request": Request}
            handler.__name__ = f"vpt_{endpoint_name}_{'_'.join(methods).lower()}"
            app.add_api_route(path, handler, methods=methods, include_in_schema=True)
            return fn
        return wrap

    @route("/predict", ["POST"], "predict")
    async def predict(request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            await fe.read_body(request)  # the size bound first; starlette re-reads the cached body
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as e:  # starlette's MultiPartException and parser errors
                raise HttpError(422, f"malformed multipart body ({e}); send fields 'task' and a file 'image'") from None
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HttpError(422, "multipart body needs a file field 'image' (and a field 'task')")
            body = {"task": form.get("task"), "top_k": form.get("top_k"), "score_thresh": None}
            image = await upload.read()
            thresh = form.get("score_thresh")
            if thresh is not None:
                try:
                    body["score_thresh"] = float(thresh)
                except ValueError:
                    raise HttpError(422, f"score_thresh must be a number in [0, 1], got {thresh!r}") from None
        elif ctype == "application/json":
            body = await fe.read_json(request)
            if not isinstance(body, dict):
                raise HttpError(422, 'send a JSON object {"task": NAME, "image": BASE64, "top_k": 5}')
            _check_keys(body, ("task", "image", "top_k", "score_thresh"), "the request")
            image = None
        else:
            raise HttpError(415, f"content type {ctype or 'none'!r} is not accepted; send application/json "
                                 f"{{\"task\", \"image\": base64}} or multipart/form-data (task, image file)")
        task = body.get("task")
        if not isinstance(task, str) or not task:
            raise HttpError(422, "field 'task' (a loaded task's name) is missing; GET /tasks lists them")
        fe.task(task)
        request.state.task = task
        top_k, thresh = _top_k(body.get("top_k")), _thresh(body.get("score_thresh"))
        if image is None:
            image = _b64(body.get("image"), "field 'image'")
        return await fe.predict_one(task, image, top_k, thresh)

    # --- Open Inference Protocol v2 ----------------------------------------------------------------------
    @route("/v2", ["GET"], "v2")
    async def v2_server(request):
        return {"name": "vpt", "version": fe.version, "extensions": ["model_repository", "binary_tensor_data"]}

    @route("/v2/health/live", ["GET"], "health")
    async def v2_live(request):
        return {"live": True}

    @route("/v2/health/ready", ["GET"], "health")
    async def v2_ready(request):
        return {"ready": True}

    @route("/v2/models/{task}", ["GET"], "v2_metadata")
    async def v2_metadata(request):
        info = fe.task(request.path_params["task"])
        det = info["task"] == "detection"
        outputs = ([{"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}] if det else
                   [{"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
                    {"name": "index", "datatype": "INT64", "shape": [-1, -1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1, -1]}])
        return {"name": info["name"], "versions": ["1"], "platform": f"vpt-{info['model_type']}",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}], "outputs": outputs,
                "parameters": {"classes": info.get("classes"), "backbone": info["backbone"],
                               "artifact_sha256": info["artifact_sha256"]}}

    @route("/v2/models/{task}/ready", ["GET"], "v2_ready")
    async def v2_model_ready(request):
        fe.task(request.path_params["task"])
        return {"name": request.path_params["task"], "ready": True}

    @route("/v2/models/{task}/infer", ["POST"], "v2_infer")
    async def v2_infer(request):
        name = request.path_params["task"]
        info = fe.task(name)
        header_len = request.headers.get("inference-header-content-length")
        raw = await fe.read_body(request)
        if header_len is not None:  # binary tensor data extension: JSON header, then the raw tensors
            if not header_len.isdigit() or int(header_len) > len(raw):
                raise HttpError(422, f"Inference-Header-Content-Length {header_len!r} does not fit the body")
            head, blob = raw[:int(header_len)], raw[int(header_len):]
        else:
            ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if ctype not in ("application/json", "application/octet-stream"):
                raise HttpError(415, f"content type {ctype!r} is not accepted; send application/json (OIP v2)")
            head, blob = raw, b""
        try:
            body = json.loads(head)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(422, f"malformed JSON ({e}); send an OIP v2 inference request") from None
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
            raise HttpError(422, 'the request needs "inputs": [{"name": "image", "datatype": "BYTES", "shape": [N], '
                                 '"data": [BASE64, ...]}]')
        inp = body["inputs"][0]
        if not isinstance(inp, dict) or inp.get("datatype") != "BYTES":
            raise HttpError(422, "input 'image' must have datatype BYTES (one image file per element)")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise HttpError(422, '"parameters" must be an object')
        top_k, thresh = _top_k(params.get("top_k"), "parameters.top_k"), _thresh(params.get("score_thresh"))
        size = (inp.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            images = _split_bytes(blob[:int(size)])
        else:
            data = inp.get("data")
            if not isinstance(data, list) or not data:
                raise HttpError(422, "input 'image' needs \"data\": a list of base64 strings (or binary data)")
            images = [_b64(d, "each element of input 'image'") for d in _flatten(data)]
        if not images or len(images) > 1024:
            raise HttpError(422, f"input 'image' holds {len(images)} images; send 1 to 1024")
        results = await asyncio.gather(*[fe.predict_one(name, im, top_k, thresh) for im in images])
        return _oip_outputs(name, info, results, body.get("id"), body.get("outputs"))

    @route("/v2/repository/index", ["POST"], "v2_repository")
    async def v2_index(request):
        names = sorted(set(fe.tasks) | set(fe.known_paths))
        return [{"name": n, "version": "1", "state": "READY" if n in fe.tasks else "UNAVAILABLE"} for n in names]

    @route("/v2/repository/models/{task}/load", ["POST"], "v2_load")
    async def v2_load(request):
        fe.check_admin(request.headers.get("authorization"))
        name = request.path_params["task"]
        body = {}
        if int(request.headers.get("content-length") or 0):
            body = await fe.read_json(request)
        path = ((body or {}).get("parameters") or {}).get("path") if isinstance(body, dict) else None
        if path is None:
            if name not in fe.known_paths:
                raise HttpError(404, f"task {name!r} was never loaded; give its artifact: "
                                     f'{{"parameters": {{"path": "DIR under --task-root"}}}}')
            full = fe.known_paths[name]
        else:
            full = fe.resolve_path(path)
        await _load(fe, name, full)
        return {}

    @route("/v2/repository/models/{task}/unload", ["POST"], "v2_unload")
    async def v2_unload(request):
        fe.check_admin(request.headers.get("authorization"))
        name = request.path_params["task"]
        fe.task(name)
        await _unload(fe, name)
        return {}

    # --- vpt's own task admin ----------------------------------------------------------------------------
    @route("/tasks", ["GET"], "tasks")
    async def list_tasks(request):
        return {"tasks": [fe.tasks[n] for n in sorted(fe.tasks)]}

    @route("/tasks/{name}", ["PUT"], "tasks_put")
    async def put_task(request):
        fe.check_admin(request.headers.get("authorization"))
        name = request.path_params["name"]
        if not NAME_RE.match(name) or name == "base":
            raise HttpError(422, f"task name {name!r}: use 1-64 letters, digits, '_', '-', '.' (not 'base')")
        body = await fe.read_json(request)
        if not isinstance(body, dict):
            raise HttpError(422, 'the body must be {"path": "DIR"}')
        _check_keys(body, ("path",), "the body")
        full = fe.resolve_path(body.get("path"))
        existed = name in fe.tasks
        info = await _load(fe, name, full)
        return JSONResponse({"task": info, "replaced": existed}, status_code=200 if existed else 201)

    @route("/tasks/{name}", ["DELETE"], "tasks_delete")
    async def delete_task(request):
        fe.check_admin(request.headers.get("authorization"))
        name = request.path_params["name"]
        fe.task(name)
        await _unload(fe, name)
        return {"deleted": name, "tasks": sorted(fe.tasks)}

    @route("/metrics", ["GET"], "metrics")
    async def metrics(request):
        fe.metrics.resident = len(fe.tasks)
        return PlainTextResponse(fe.metrics.render(), media_type="text/plain; version=0.0.4")

    if health:
        @route("/health", ["GET"], "health")
        async def health_route(request):
            return PlainTextResponse("ok")


async def _load(fe: Frontend, name: str, path: str) -> Dict[str, Any]:
    """Load in the model worker, which checks the artifact first (``vpt inspect``'s checks: schema, data never
    code, size bound on the meta device, tensors against the header) and answers 422 naming the problem."""
    ans = await fe.run({"op": "load", "task": name, "path": path})
    if ans.get("status") != 200:
        raise HttpError(int(ans.get("status", 500)), ans.get("error", "load failed"))
    fe.tasks[name] = ans["info"]
    fe.known_paths[name] = path
    return ans["info"]


async def _unload(fe: Frontend, name: str) -> None:
    fe.tasks.pop(name, None)  # new requests get 404 at once; queued ones finish or get 404 (docs/serve.md)
    await fe.run({"op": "unload", "task": name})


def _flatten(data):
    for d in data:
        if isinstance(d, list):
            yield from _flatten(d)
        else:
            yield d


def _split_bytes(blob: bytes) -> List[bytes]:
    """OIP v2 binary BYTES tensor: each element is a 4-byte little-endian length, then that many bytes."""
    import struct
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise HttpError(422, "binary BYTES tensor is truncated (a 4-byte length prefix is cut off)")
        (n,) = struct.unpack_from("<I", blob, i)
        if i + 4 + n > len(blob):
            raise HttpError(422, "binary BYTES tensor is truncated (an element is shorter than its length)")
        out.append(blob[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _oip_outputs(name, info, results, req_id, wanted) -> Dict[str, Any]:
    n = len(results)
    if info["task"] == "detection":
        m = max((len(r["detections"]) for r in results), default=0)
        pad = lambda r, key, fill: [d[key] for d in r["detections"]] + [fill] * (m - len(r["detections"]))  # noqa: E731
        outs = [{"name": "boxes", "datatype": "FP32", "shape": [n, m, 4],
                 "data": [v for r in results for b in pad(r, "xyxy", [0.0] * 4) for v in b]},
                {"name": "scores", "datatype": "FP32", "shape": [n, m],
                 "data": [v for r in results for v in pad(r, "score", 0.0)]},
                {"name": "labels", "datatype": "BYTES", "shape": [n, m],
                 "data": [v for r in results for v in pad(r, "label", "")]}]
    else:
        k = len(results[0]["predictions"])
        outs = [{"name": "label", "datatype": "BYTES", "shape": [n, k],
                 "data": [p["label"] for r in results for p in r["predictions"]]},
                {"name": "index", "datatype": "INT64", "shape": [n, k],
                 "data": [p["index"] for r in results for p in r["predictions"]]},
                {"name": "score", "datatype": "FP32", "shape": [n, k],
                 "data": [p["score"] for r in results for p in r["predictions"]]}]
    if isinstance(wanted, list) and wanted:
        names = {o.get("name") for o in wanted if isinstance(o, dict)}
        outs = [o for o in outs if o["name"] in names] or outs
    res = {"model_name": name, "model_version": "1", "outputs": outs}
    if isinstance(req_id, str):
        res["id"] = req_id
    return res
