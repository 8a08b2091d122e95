"""``vpt serve --task NAME=ARTIFACT [--task ...]``: serve prompt-tuned tasks over HTTP, many tasks on one
frozen backbone, batched across tasks (a batch mixes requests of different tasks in one forward pass).

  vpt serve --task pets=runs/pets/best --task cars=runs/cars/best --port 8000
  curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
       -d "{\\"task\\": \\"pets\\", \\"image\\": \\"$(base64 -w0 cat.jpg)\\"}"

Endpoints: POST /predict, the Open Inference Protocol v2 (/v2/...), GET /tasks, PUT/DELETE /tasks/NAME
(admin: --admin-token-file), GET /metrics, GET /health. docs/serve.md has the full reference.
Engines: LitServe (default, the [serve] extra) or Ray Serve (--engine ray, the [ray] extra).
Binds 127.0.0.1 unless --host says otherwise. SIGTERM: stop accepting, finish in-flight requests, exit 0.

exit status:
  0  stopped by SIGTERM / Ctrl-C after serving
  2  a bad flag or artifact, a missing optional dependency (the message has the pip command)"""
from __future__ import annotations

import argparse
import os

from ._artifact import add_artifact_flags, check_max_params
from ._common import UserError

HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve tasks over HTTP (one backbone, cross-task batches)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", action="append", default=[], metavar="NAME=ARTIFACT",
                   help="a task to serve (repeat); tasks on the same backbone share one copy of it")
    p.add_argument("--task-root", metavar="DIR", help="the folder PUT /tasks/NAME may load artifacts from "
                                                     "(paths outside it, '..' and links out are refused)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind: 127.0.0.1 (default, this machine "
                                                       "only), 0.0.0.0 or ::")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per forward pass (default 32)")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0,
                   help="how long a batch waits to fill (default 5 ms)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--admin-token-file", metavar="FILE", help="a file holding the bearer token that PUT / DELETE "
                                                             "/tasks and the OIP repository calls need; without it "
                                                             "they are refused (403)")
    p.add_argument("--engine", choices=["litserve", "ray"], default="litserve")
    p.add_argument("--replicas", type=int, default=1, help="ray: replicas of the deployment (default 1)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height "
                                                                      "(default 40,000,000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the model worker")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait (default 60)")
    add_artifact_flags(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.host not in HOSTS:
        raise UserError(f"--host {args.host!r}: use 127.0.0.1 (this machine only), 0.0.0.0 or ::")
    if not 1024 <= args.port <= 65535:
        raise UserError(f"--port must be in 1024..65535, got {args.port}")
    for flag, v in (("--max-batch-size", args.max_batch_size), ("--replicas", args.replicas),
                    ("--max-pixels", args.max_pixels)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if args.batch_timeout_ms < 0 or args.max_body_mb <= 0 or args.timeout <= 0:
        raise UserError("--batch-timeout-ms must be >= 0, --max-body-mb and --timeout > 0")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.task_root is not None and not os.path.isdir(args.task_root):
        raise UserError(f"--task-root {args.task_root!r} is not a folder; create it or pass another")
    check_max_params(args.max_params)


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read(4096).strip()
    except OSError as e:
        raise UserError(f"--admin-token-file {path!r} can't be read ({e.strerror}); pass a file holding the token")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(f"--admin-token-file {path!r}: the token must be one word of at least 16 characters "
                        f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > {path})")
    return token


def run(args) -> int:
    _check(args)
    from ..serve.app import parse_task_flags
    tasks = parse_task_flags(args.task)
    if not tasks and not args.task_root:
        raise UserError("nothing to serve: pass --task NAME=ARTIFACT (repeatable), or --task-root DIR with "
                        "--admin-token-file to load tasks while serving")
    token = read_token(args.admin_token_file) if args.admin_token_file else None
    try:
        if args.engine == "ray":
            import ray  # noqa: F401
            from ray import serve  # noqa: F401
        else:
            import litserve  # noqa: F401
    except ImportError:
        extra = "ray" if args.engine == "ray" else "serve"
        raise ImportError(f"vpt serve --engine {args.engine} needs the [{extra}] extra: pip install 'vpt[{extra}]'") \
            from None
    from ..artifact import Artifact
    from ..engine import resolve_device
    from ..errors import ArtifactError
    from ..serve.app import Frontend
    from ..serve.pool import task_info
    from ..version import __version__

    infos = {}
    for name, path in tasks.items():  # every artifact checked before anything starts (vpt inspect's checks)
        try:
            infos[name] = task_info(name, Artifact.open(path), path, args.max_params)
        except ArtifactError as e:
            raise UserError(f"--task {name}={path}: {e}") from None
    device = str(resolve_device(None if args.device == "auto" else args.device))
    fe = Frontend(submit=None, tasks=infos, known_paths=dict(tasks), admin_token=token,
                  task_root=os.path.abspath(args.task_root) if args.task_root else None,
                  max_body=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels, engine=args.engine,
                  version=__version__)
    print(f"vpt serve: {len(tasks)} task(s) on http://{args.host}:{args.port} ({args.engine}, {device}); "
          f"SIGTERM or Ctrl-C stops", flush=True)
    if args.engine == "ray":
        from ..serve.ray_app import run_ray
        return run_ray(fe, tasks, host=args.host, port=args.port, device=device, max_batch_size=args.max_batch_size,
                       batch_timeout_ms=args.batch_timeout_ms, max_params=args.max_params, weights=args.weights,
                       replicas=args.replicas, threads=args.threads)
    from ..serve.lit import run_litserve
    return run_litserve(fe, tasks, host=args.host, port=args.port, device=device,
                        max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
                        max_params=args.max_params, weights=args.weights, threads=args.threads, timeout_s=args.timeout)
