"""Load test of `vpt serve`: a bounded load generator (request budget AND time limit per scenario, a thread
per client with keep-alive HTTP) against real servers started on a free 127.0.0.1 port.

Measures, for 1, 8 and 64 VPT-deep tasks on one backbone (requests spread evenly over the tasks) at several
client concurrencies: throughput, p50 / p99 latency, the server's batch sizes (its /metrics histogram) and
its memory (PSS of the server's process tree: main + HTTP + model worker). Then: memory per added task
against the artifact's tensor bytes, as many tasks resident as --resident (loaded with PUT /tasks), the
memory one process per task would take, and a soak (--soak-s, a task loaded and unloaded every 10 s, 1 %
corrupt images; every valid request must succeed and every corrupt one get its 400).

    python benchmarks/serve_load.py --out benchmarks/results/serve_load_cpu.json

Only loopback addresses are used; every loop stops by itself (budget, time limit).
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import vpt  # noqa: E402
from vpt.version import source_commit  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


# --- artifacts and images -------------------------------------------------------------------------------
def make_artifacts(root, n, backbone, num_tokens, num_classes, seed=0):
    bb = vpt.create_backbone(backbone, pretrained=False)
    g = torch.Generator().manual_seed(seed)
    dirs = []
    for i in range(n):
        d = os.path.join(root, f"t{i:04d}")
        if not os.path.isfile(os.path.join(d, "adapter_config.json")):
            m = vpt.create_model(bb, prompt={"kind": "vpt_deep", "num_tokens": num_tokens}, num_classes=num_classes,
                                 class_names=[f"c{j}" for j in range(num_classes)])
            with torch.no_grad():
                for p in m.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=g) * 0.02)
            m.save_pretrained(d)
        dirs.append(d)
    return dirs


def make_images(n, size=224, seed=0):
    from PIL import Image
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        px = im.load()
        for _ in range(400):
            x, y = rng.randrange(size), rng.randrange(size)
            px[x, y] = tuple(rng.randrange(256) for _ in range(3))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


# --- the server ---------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tasks, args, task_root=None, log=None):
        self.port = free_port()
        cmd = [sys.executable, "-m", "vpt", "serve", "--port", str(self.port), "--device", args.device,
               "--max-batch-size", str(args.max_batch_size), "--batch-timeout-ms", str(args.batch_timeout_ms),
               "--threads", str(args.threads), "--timeout", "120"]
        for name, d in tasks.items():
            cmd += ["--task", f"{name}={d}"]
        if task_root:
            tok = os.path.join(task_root, "..", "token")
            with open(tok, "w") as f:
                f.write(TOKEN)
            cmd += ["--task-root", task_root, "--admin-token-file", tok]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(vpt.__file__)))]
                                                          + sys.path))
        self.log = open(log or os.devnull, "w")
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {log}")
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > 600:
                raise RuntimeError("server not ready in 600 s")
            time.sleep(0.5)
        self.startup_s = time.time() - t0

    def pss_mb(self):
        """PSS of the server's process tree (shared pages counted once across the tree), MiB."""
        pids, frontier = {self.proc.pid}, [self.proc.pid]
        children = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(p))
        while frontier:
            nxt = children.get(frontier.pop(), [])
            pids.update(nxt)
            frontier += nxt
        total = 0
        for p in pids:
            try:
                for line in open(f"/proc/{p}/smaps_rollup"):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def metrics(self):
        return request(self.port, "GET", "/metrics")[1].decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server's workers too
            rc = None
        self.log.close()
        return rc


def request(port, method, path, body=None, headers=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        if own:
            conn.close()


def batch_stats(before, after):
    def get(text, name):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    n = get(after, "vpt_serve_batch_size_count") - get(before, "vpt_serve_batch_size_count")
    s = get(after, "vpt_serve_batch_size_sum") - get(before, "vpt_serve_batch_size_sum")
    return {"batches": int(n), "mean_batch_size": round(s / n, 2) if n else None}


# --- load ---------------------------------------------------------------------------------------------------
def load(port, names, images, concurrency, budget, time_limit, corrupt=0.0, seed=0, stop_event=None):
    """``budget`` requests at most, ``time_limit`` seconds at most, from ``concurrency`` client threads."""
    lock = threading.Lock()
    state = {"left": budget, "lat": [], "ok": 0, "fail": [], "bad_ok": 0, "bad_wrong": []}
    bodies = [json.dumps({"task": n, "image": base64.b64encode(images[i % len(images)]).decode()}).encode()
              for i, n in enumerate(names * max(1, (64 // len(names))))]
    bad = json.dumps({"task": names[0], "image": base64.b64encode(images[0][: len(images[0]) // 3]).decode()}).encode()
    deadline = time.time() + time_limit

    def client(k):
        rng = random.Random(seed * 1000 + k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
        while time.time() < deadline and not (stop_event and stop_event.is_set()):
            with lock:
                if state["left"] <= 0:
                    break
                state["left"] -= 1
            is_bad = rng.random() < corrupt
            body = bad if is_bad else bodies[rng.randrange(len(bodies))]
            t0 = time.perf_counter()
            try:
                status, raw = request(port, "POST", "/predict", body, {"Content-Type": "application/json"}, conn)
            except (OSError, http.client.HTTPException) as e:
                status, raw = -1, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
            dt = time.perf_counter() - t0
            with lock:
                if is_bad:
                    if status == 400:
                        state["bad_ok"] += 1
                    else:
                        state["bad_wrong"].append(status)
                elif status == 200:
                    state["ok"] += 1
                    state["lat"].append(dt)
                else:
                    state["fail"].append((status, raw[:200].decode(errors="replace")))
        conn.close()

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    lat = sorted(state["lat"])
    q = (lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1)) if lat else (lambda p: None)
    return {"_lat": lat, "requests_ok": state["ok"], "failed": len(state["fail"]), "failures": state["fail"][:5],
            "corrupt_answered_400": state["bad_ok"], "corrupt_other_status": state["bad_wrong"][:5],
            "seconds": round(wall, 2), "throughput_rps": round(state["ok"] / wall, 2) if wall else None,
            "p50_ms": q(0.50), "p99_ms": q(0.99),
            "mean_ms": round(statistics.mean(lat) * 1000, 1) if lat else None}


def merge(runs):
    """Rounds of one scenario -> one result: requests / seconds summed, latencies pooled."""
    lat = sorted(x for r in runs for x in r["_lat"])
    ok, secs = sum(r["requests_ok"] for r in runs), sum(r["seconds"] for r in runs)
    nb = sum(r["batches"] for r in runs)
    q = (lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1)) if lat else (lambda p: None)
    return {"requests_ok": ok, "failed": sum(r["failed"] for r in runs),
            "failures": [f for r in runs for f in r["failures"]][:5], "seconds": round(secs, 2),
            "throughput_rps": round(ok / secs, 2) if secs else None, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "mean_ms": round(statistics.mean(lat) * 1000, 1) if lat else None, "rounds": len(runs), "batches": nb,
            "mean_batch_size": round(sum(r["batches"] * (r["mean_batch_size"] or 0) for r in runs) / nb, 2)
            if nb else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/serve_load_cpu.json")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vpt_serve_load"))
    ap.add_argument("--backbone", default="timm:vit_tiny_patch16_224")
    ap.add_argument("--num-tokens", type=int, default=10)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--budget", type=int, default=400, help="requests per scenario at most")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per scenario at most")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per scenario")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-timeout-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resident", type=int, default=1000, help="tasks to load with PUT /tasks (0: skip)")
    ap.add_argument("--resident-time-limit", type=float, default=600.0)
    ap.add_argument("--soak-s", type=float, default=300.0, help="soak length (0: skip)")
    ap.add_argument("--phases", nargs="+", choices=["load", "resident", "soak"], default=["load", "resident", "soak"],
                    help="what to run (default all)")
    ap.add_argument("--soak-concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    t_start = time.time()
    os.makedirs(args.workdir, exist_ok=True)
    root = os.path.join(args.workdir, "tasks")
    n_art = max(max(args.tasks), args.resident, 9)
    t0 = time.time()
    dirs = make_artifacts(root, n_art, args.backbone, args.num_tokens, args.num_classes)
    art_s = time.time() - t0
    images = make_images(64)
    from vpt.artifact import Artifact
    from vpt.serve.pool import task_info
    info = task_info("t0", Artifact.open(dirs[0]), dirs[0])
    result = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "config": vars(args),
              "device": args.device, "cpu_count": os.cpu_count(),
              "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(), "torch": torch.__version__,
                           "python": sys.version.split()[0], **_versions()},
              "artifact": {"trainable_parameters": info["trainable_parameters"], "tensor_bytes": info["tensor_bytes"],
                           "seconds_to_make": round(art_s, 1)},
              "scenarios": [], "targets": {}}

    def save():
        result["wall_s"] = round(time.time() - t_start, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)

    pss, servers = {}, {}
    try:
        for n in (args.tasks if "load" in args.phases else []):  # all running at once: rounds alternate between them, so machine-load drift cancels
            servers[n] = Server({f"t{i:04d}": dirs[i] for i in range(n)}, args,
                                log=os.path.join(args.workdir, f"server_{n}.log"))
        for n, srv in servers.items():
            load(srv.port, [f"t{i:04d}" for i in range(n)], images, 4, args.warmup, 60)
            pss[n] = srv.pss_mb()
            result.setdefault("server", {})[str(n)] = {"pss_mb": round(pss[n], 1), "startup_s": round(srv.startup_s, 1)}
        for c in args.concurrency:
            runs = {n: [] for n in servers}
            for _ in range(args.rounds):
                for n, srv in servers.items():
                    before = srv.metrics()
                    r = load(srv.port, [f"t{i:04d}" for i in range(n)], images, c, args.budget // args.rounds,
                             args.time_limit / args.rounds)
                    r.update(batch_stats(before, srv.metrics()))
                    runs[n].append(r)
            for n, rs in runs.items():
                r = merge(rs)
                r.update(tasks=n, concurrency=c)
                result["scenarios"].append(r)
                print(json.dumps({k: r[k] for k in ("tasks", "concurrency", "throughput_rps", "p50_ms", "p99_ms",
                                                    "mean_batch_size", "failed")}), flush=True)
            save()
    finally:
        for n, srv in servers.items():
            result.setdefault("server", {}).setdefault(str(n), {})["exit_code"] = srv.stop()
        save()

    # targets: mixed-task throughput at saturation vs the single-task server
    top = max(args.concurrency)
    thr = {s["tasks"]: s["throughput_rps"] for s in result["scenarios"] if s["concurrency"] == top}
    if 1 in thr:
        for n in thr:
            if n != 1:
                result["targets"][f"throughput_{n}_tasks_vs_1"] = {"ratio": round(thr[n] / thr[1], 3),
                                                                   "target": ">= 0.9", "met": thr[n] / thr[1] >= 0.9}
    if 1 in pss and max(args.tasks) > 1:
        n = max(args.tasks)
        per = (pss[n] - pss[1]) * 1024 * 1024 / (n - 1)
        result["memory"] = {"pss_mb_1_task": round(pss[1], 1), f"pss_mb_{n}_tasks": round(pss[n], 1),
                            "bytes_per_added_task": int(per), "artifact_tensor_bytes": info["tensor_bytes"],
                            "one_process_per_task_mb": {str(k): round(pss[1] * k, 1) for k in (8, 64, 1000)},
                            "note": "one process per task = N x the 1-task server's PSS (each is a full server)"}
        result["targets"]["memory_per_task_vs_2x_tensor_bytes"] = {
            "ratio": round(per / info["tensor_bytes"], 2), "target": "<= 2.0", "met": per <= 2 * info["tensor_bytes"]}
    save()

    if args.resident and "resident" in args.phases:
        result["resident"] = resident(args, dirs, root, info)
        result["targets"]["resident_tasks"] = {"loaded": result["resident"]["loaded"], "target": args.resident,
                                               "met": result["resident"]["loaded"] >= args.resident}
        save()
    if args.soak_s and "soak" in args.phases:
        result["soak"] = soak(args, dirs, root, images)
        s = result["soak"]
        result["targets"]["soak"] = {"failed_valid": s["failed"], "rss_growth_pct": s["pss_growth_pct"],
                                     "corrupt_not_400": len(s["corrupt_other_status"]),
                                     "met": s["failed"] == 0 and s["pss_growth_pct"] < 5
                                     and not s["corrupt_other_status"] and s["churn_errors"] == 0}
        save()
    print(json.dumps(result["targets"], indent=1))
    return 0


def _versions():
    out = {}
    for mod in ("litserve", "fastapi", "uvicorn", "timm"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (a missing one is just not listed)
            pass
    return out


def resident(args, dirs, root, info):
    """Load tasks one by one with PUT /tasks until --resident or the time limit; PSS before / after."""
    srv = Server({"t0000": dirs[0]}, args, task_root=root, log=os.path.join(args.workdir, "server_resident.log"))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        base = srv.pss_mb()
        t0, loaded = time.time(), 1
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=180)
        for i in range(1, args.resident):
            if time.time() - t0 > args.resident_time_limit:
                break
            st, raw = request(srv.port, "PUT", f"/tasks/t{i:04d}", json.dumps({"path": os.path.basename(dirs[i])}),
                              auth, conn)
            if st not in (200, 201):
                raise RuntimeError(f"PUT t{i:04d}: {st} {raw[:200]}")
            loaded += 1
        conn.close()
        load_s = time.time() - t0
        after = srv.pss_mb()
        names = [f"t{i:04d}" for i in range(0, loaded, max(1, loaded // 64))]
        r = load(srv.port, names, make_images(8), 8, 200, 30)
        r.pop("_lat")
        return {"loaded": loaded, "seconds_to_load": round(load_s, 1), "pss_mb_before": round(base, 1),
                "pss_mb_after": round(after, 1),
                "bytes_per_task": int((after - base) * 1024 * 1024 / max(1, loaded - 1)),
                "artifact_tensor_bytes": info["tensor_bytes"], "load_while_resident": r}
    finally:
        srv.stop()


def soak(args, dirs, root, images):
    """--soak-s of mixed load (1 % corrupt images) while task 'churn' is loaded and unloaded every 10 s."""
    tasks = {f"t{i:04d}": dirs[i] for i in range(8)}
    srv = Server(tasks, args, task_root=root, log=os.path.join(args.workdir, "server_soak.log"))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    stop = threading.Event()
    churn = {"cycles": 0, "errors": []}

    def churner():
        i = 0
        while not stop.wait(5.0):
            try:
                if i % 2 == 0:
                    st, raw = request(srv.port, "PUT", "/tasks/churn", json.dumps({"path": os.path.basename(dirs[8])}),
                                      auth)
                else:
                    st, raw = request(srv.port, "DELETE", "/tasks/churn", None, auth)
                    churn["cycles"] += 1
                if st not in (200, 201):
                    churn["errors"].append((st, raw[:200].decode(errors="replace")))
            except OSError as e:
                churn["errors"].append((-1, str(e)))
            i += 1
    try:
        load(srv.port, list(tasks), images, 4, args.warmup * 4, 60)
        start = srv.pss_mb()
        th = threading.Thread(target=churner)
        th.start()
        samples = []

        def sampler():
            while not stop.wait(15.0):
                samples.append(round(srv.pss_mb(), 1))
        sm = threading.Thread(target=sampler)
        sm.start()
        r = load(srv.port, list(tasks), images, args.soak_concurrency, 10 ** 9, args.soak_s, corrupt=0.01, seed=1)
        r.pop("_lat")
        stop.set()
        th.join()
        sm.join()
        end = srv.pss_mb()
        r.update(pss_mb_start=round(start, 1), pss_mb_end=round(end, 1),
                 pss_growth_pct=round(100 * (end - start) / start, 2), pss_samples_mb=samples,
                 churn_cycles=churn["cycles"], churn_errors=len(churn["errors"]), churn_error_list=churn["errors"][:5])
        return r
    finally:
        stop.set()
        r_exit = srv.stop()
        print(f"soak server exit code {r_exit}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
