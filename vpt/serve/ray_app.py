"""``vpt serve --engine ray``: the same service as a Ray Serve deployment (the ``[ray]`` extra).

Each replica holds a ``TaskPool`` and vpt's FastAPI routes (``vpt.serve.app``); predictions go through
``@serve.batch`` with the task id in the payload, so one batch mixes tasks exactly as on LitServe (Ray's
``@serve.multiplexed`` would split batches by model id, undoing the cross-task batching). Replicas and
autoscaling are Ray's own options: ``--replicas N`` here, or any deployment option through ``serve run``:

    serve run vpt.serve.ray_app:build_app tasks=pets=runs/pets/best,cars=runs/cars/best max_batch_size=32

(``build_app`` is a Ray Serve application builder; a config file can set ``num_replicas`` or
``autoscaling_config`` on the ``VptDeployment`` deployment). Tasks are fixed per deployment: change them
by redeploying (PUT / DELETE /tasks answer 403 saying so), since an admin call would reach one replica only.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

from ray import serve

from .app import DEFAULT_MAX_BODY, Frontend, build_routes, parse_task_flags
from .images import DEFAULT_MAX_PIXELS
from .pool import TaskPool, handle_batch

_logger = logging.getLogger(__name__)


@serve.ingress()
class VptDeployment:
    """One replica: the tasks on their shared backbones, and the routes."""

    def __init__(self, tasks: Dict[str, str], device: str = "cpu", max_batch_size: int = 32,
                 batch_timeout_ms: float = 5.0, max_params: Optional[int] = None, weights: Optional[str] = None,
                 max_body: int = DEFAULT_MAX_BODY, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threads: Optional[int] = None):
        import torch

        from ..schema import DEFAULT_MAX_PARAMS
        from ..version import __version__
        if threads:
            torch.set_num_threads(threads)
        self.pool = TaskPool(device=device, max_params=max_params or DEFAULT_MAX_PARAMS, weights=weights)
        infos = {name: self.pool.load(name, path) for name, path in tasks.items()}
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_timeout_ms / 1000.0)
        self.frontend = Frontend(submit=self.submit, tasks=infos, known_paths=dict(tasks), engine="ray", admin=False,
                                 max_body=max_body, max_pixels=max_pixels, version=__version__)

    def __serve_build_asgi_app__(self):
        from fastapi import FastAPI
        app = FastAPI(title="vpt serve (ray)")
        build_routes(app, self.frontend)
        return app

    async def submit(self, item: Dict[str, Any]) -> Dict[str, Any]:
        return await self._batched(item)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items):
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(handle_batch, self.pool, list(items))


def deployment(replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0):
    return serve.deployment(VptDeployment, name="VptDeployment", num_replicas=replicas,
                            ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus})


def build_app(args: Dict[str, str]):
    """Ray Serve application builder (``serve run vpt.serve.ray_app:build_app tasks=NAME=DIR,...``)."""
    raw = args.get("tasks", "")
    tasks = parse_task_flags([t for t in raw.split(",") if t])
    device = args.get("device", "cpu")
    return deployment(int(args.get("replicas", 1)), num_gpus=1.0 if device.startswith("cuda") else 0.0).bind(
        tasks, device=device, max_batch_size=int(args.get("max_batch_size", 32)),
        batch_timeout_ms=float(args.get("batch_timeout_ms", 5.0)))


def run_ray(fe: Frontend, tasks: Dict[str, str], host: str, port: int, device: str, max_batch_size: int,
            batch_timeout_ms: float, max_params: int, weights: Optional[str], replicas: int = 1,
            threads: Optional[int] = None) -> int:
    """Start a local Ray instance (or join RAY_ADDRESS), deploy, serve until SIGTERM / SIGINT, then shut down
    Serve (replicas finish their in-flight requests) and Ray. Returns 0."""
    import os

    import ray
    stop = threading.Event()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own (abort) handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        app = deployment(replicas, num_cpus=min(1.0, (os.cpu_count() or 1) / max(1, replicas)),
                         num_gpus=1.0 if device.startswith("cuda") else 0.0).bind(
            tasks, device=device, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
            max_params=max_params, weights=weights, max_body=fe.max_body, max_pixels=fe.max_pixels, threads=threads)
        serve.run(app, name="vpt", route_prefix="/", blocking=False)
        print(f"vpt serve: ray deployment ready on http://{host}:{port}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
