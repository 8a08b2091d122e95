"""``vpt serve`` on LitServe: one inference worker holds the ``TaskPool`` (LitServe's batching: requests of
any task are collected up to --max-batch-size / --batch-timeout-ms and answered in one ``handle_batch``),
and LitServe's FastAPI app carries vpt's routes (``vpt.serve.app``) as a ``LitSpec``.

One worker process owns the models, so loading / dropping a task is an item in the same queue as the
predictions (it takes effect between two batches); one API process keeps the task table the routes check.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from typing import Any, Dict, Optional

import litserve as ls
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from .app import Frontend, build_routes
from .pool import TaskPool, handle_batch

_logger = logging.getLogger(__name__)


class VptSpec(LitSpec):
    """vpt's routes on LitServe's app; ``submit`` puts one item on the worker's queue and awaits its answer."""

    def __init__(self, frontend: Frontend):
        super().__init__()
        self.api_path = "/predict"  # LitServe's key for this API's queue (the routes are vpt's own)
        self.frontend = frontend
        frontend.submit = self.submit
        build_routes(_Collector(self), frontend, health=False)  # LitServe's own /health answers

    def __getstate__(self):  # the worker process needs no routes or task table
        state = super().__getstate__()
        state["_endpoints"], state["frontend"] = [], None
        return state

    async def submit(self, item: Dict[str, Any]) -> Dict[str, Any]:
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), item))
            await event.wait()
            response, status = self.response_buffer[uid].response
        finally:
            self.response_buffer.pop(uid, None)
        if status != LitAPIStatus.OK:
            code = getattr(response, "status_code", 500)
            return {"status": code if code in (504,) else 500,
                    "error": "request timed out in the queue" if code == 504 else "the model worker failed; see the "
                                                                                   "server log"}
        return response

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output


class _Collector:
    """Quacks like a FastAPI app for ``build_routes``: the routes become the spec's endpoints."""

    def __init__(self, spec: LitSpec):
        self.spec = spec

    def add_api_route(self, path, endpoint, methods, include_in_schema=True):
        self.spec.add_endpoint(path, endpoint, methods)


class VptLitAPI(ls.LitAPI):
    """The model worker: a ``TaskPool`` loaded with the startup tasks; one ``handle_batch`` per batch."""

    def __init__(self, tasks: Dict[str, str], max_params: int, weights: Optional[str], threads: Optional[int],
                 **kwargs):
        super().__init__(**kwargs)
        self.startup_tasks, self.max_params, self.weights, self.threads = dict(tasks), max_params, weights, threads

    def setup(self, device):
        import torch
        if self.threads:
            torch.set_num_threads(self.threads)
        self.pool = TaskPool(device=device, max_params=self.max_params, weights=self.weights)
        for name, path in self.startup_tasks.items():
            self.pool.load(name, path)

    def decode_request(self, request, **kwargs):
        return request

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x, **kwargs):
        return handle_batch(self.pool, x)

    def unbatch(self, output):
        return output

    def encode_response(self, output, **kwargs):
        return output


def run_litserve(frontend: Frontend, tasks: Dict[str, str], host: str, port: int, device: str,
                 max_batch_size: int, batch_timeout_ms: float, max_params: int, weights: Optional[str],
                 threads: Optional[int] = None, timeout_s: float = 60.0, log_level: str = "warning") -> int:
    """Serve until SIGTERM / SIGINT; SIGTERM drains: the HTTP server stops accepting, answers what is in
    flight (LitServe's uvicorn graceful shutdown), then the worker stops. Returns 0."""
    import multiprocessing as mp
    spec = VptSpec(frontend)
    api = VptLitAPI(tasks, max_params, weights, threads, max_batch_size=max_batch_size,
                    batch_timeout=batch_timeout_ms / 1000.0, spec=spec)
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=timeout_s,
                          disable_openapi_url=False)
    server.uvicorn_graceful_timeout = timeout_s

    def drain(signum, frame):
        def stop():
            for child in mp.active_children():  # the uvicorn process(es): stop accepting, finish in-flight
                if child.name.startswith("LitServer-"):
                    os.kill(child.pid, signal.SIGTERM)
            for child in mp.active_children():
                if child.name.startswith("LitServer-"):
                    child.join(timeout_s)
            if server._shutdown_event is not None:
                server._shutdown_event.set()  # LitServe's own shutdown: the inference worker, the manager
        threading.Thread(target=stop, name="vpt-serve-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    server.run(host=host, port=port, num_api_servers=1, log_level=log_level, generate_client_file=False,
               api_server_worker_type="process")
    return 0
