"""`vpt serve`: a real server on a free loopback port in a subprocess. Mixed-task batches answer what
`vpt predict` answers; the Open Inference Protocol v2 (metadata, ready, infer with BYTES, repository load /
unload); the admin token and --task-root rules; every bad input gets its 4xx and the server then answers a
good request; SIGTERM drains in-flight requests and exits 0. The Ray Serve engine answers as LitServe does."""
import base64
import concurrent.futures as cf
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.backbones import create_backbone
from vpt.cli import main

pytest.importorskip("litserve", reason="vpt serve needs the [serve] extra: pip install 'vpt[serve]'")
SERVER = [pytest.mark.subprocess, pytest.mark.slow]  # each starts real servers (about 30-60 s on 2 cores)

TASKS = {"deep3": ({"kind": "vpt_deep", "num_tokens": 3}, ["cat", "dog", "frog"]),
         "deep5": ({"kind": "vpt_deep", "num_tokens": 5}, ["yes", "no"]),
         "linear": (None, ["a", "b", "c", "d"])}
TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "root"
    bb = create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    torch.manual_seed(0)
    dirs = {}
    for name, (prompt, classes) in TASKS.items():
        m = vpt.create_model(bb, prompt=prompt, num_classes=len(classes), class_names=classes)
        with torch.no_grad():  # off the init, so that a task mix-up shows
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        dirs[name] = str(root / name)
        m.save_pretrained(dirs[name])
    other = create_backbone(TINY_VIT_NAME, pretrained=False, init_seed=3, model_kwargs=dict(TINY_VIT))
    dirs["other"] = str(root / "other")  # another backbone: its own model in the same server
    vpt.create_model(other, prompt="vpt_deep", num_classes=2, class_names=["p", "q"]).save_pretrained(dirs["other"])
    outside = tmp / "outside"
    vpt.create_model(bb, prompt="vpt_deep", num_classes=2).save_pretrained(str(outside))
    os.symlink(outside, root / "link_out")
    imgs = make_image_folder(tmp / "imgs", per_class=2)
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    return {"tmp": tmp, "root": str(root), "dirs": dirs, "imgs": str(imgs), "token": str(token),
            "outside": str(outside)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vpt", "serve", "--port", str(port), "--device", "cpu",
                             "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own process group: kill_tree reaches the workers
    return proc, f"http://127.0.0.1:{port}"


def kill_tree(proc):
    """After a failed test: the server and its HTTP / model worker processes (killing the main one alone
    would leave them running)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def wait_ready(proc, url, log, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{open(log.name).read()[-3000:]}"
        try:
            if call(url + "/v2/health/ready")[0] == 200 and call(url + "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready in {timeout} s:\n{open(log.name).read()[-3000:]}")


def call(url, body=None, method=None, headers=None, ctype="application/json"):
    """(status, parsed JSON or text) of one request; never raises for an HTTP error status."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = dict(headers or {})
    if data is not None and ctype:
        h.setdefault("Content-Type", ctype)
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def call_headers_only(url, length):
    """(status, parsed JSON) of a POST that announces a body of ``length`` bytes and sends none of it."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.putrequest("POST", u.path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def b64(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def images(s):
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(s["imgs"]) for f in fs if f.endswith(".png"))


def predict_cli(artifact, paths, capsys):
    """`vpt predict`'s records for these images: {path: [(label, index, prob)]} with every class."""
    capsys.readouterr()
    assert main(["predict", artifact, *paths, "--topk", "10"]) == 0
    return {r["path"]: [(p["label"], p["index"], p["prob"]) for p in r["predictions"]]
            for r in json.loads(capsys.readouterr().out)}


def same(server_preds, cli_preds):
    got = [(p["label"], p["index"], p["score"]) for p in server_preds]
    assert [g[:2] for g in got] == [c[:2] for c in cli_preds]
    assert all(abs(g[2] - c[2]) <= 2e-6 for g, c in zip(got, cli_preds)), (got, cli_preds)


def bomb_png(side=10000):
    """A small PNG whose header claims side x side pixels (a decompression bomb for a naive server)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


@SERVER[0]
@SERVER[1]
def test_litserve_server_end_to_end(setup, capsys, tmp_path):
    s, d = setup, setup["dirs"]
    log = open(tmp_path / "server.log", "w")
    proc, url = start(["--task", f"deep3={d['deep3']}", "--task", f"deep5={d['deep5']}", "--task",
                       f"linear={d['linear']}", "--task", f"other={d['other']}", "--task-root", s["root"],
                       "--admin-token-file", s["token"], "--max-batch-size", "16", "--batch-timeout-ms", "300",
                       "--max-body-mb", "1"], log)
    try:
        wait_ready(proc, url, log)
        paths = images(s)
        auth = {"Authorization": f"Bearer {TOKEN}"}

        # --- mixed-task batches == vpt predict, per artifact ---------------------------------------------
        jobs = [(t, p) for p in paths for t in ("deep3", "deep5", "linear", "other")]
        with cf.ThreadPoolExecutor(16) as ex:
            answers = list(ex.map(lambda j: call(url + "/predict", {"task": j[0], "image": b64(j[1]), "top_k": 10}),
                                  jobs))
        cli = {t: predict_cli(d[t], paths, capsys) for t in ("deep3", "deep5", "linear", "other")}
        for (t, p), (status, ans) in zip(jobs, answers):
            assert status == 200, ans
            assert ans["task"] == t
            same(ans["predictions"], cli[t][p])
        status, metrics = call(url + "/metrics")
        assert status == 200
        n_batches = float(re.search(r"^vpt_serve_batch_size_count (\S+)$", metrics, re.M).group(1))
        assert n_batches < len(jobs), "no request shared a batch"  # requests of 4 tasks were batched together
        assert 'vpt_serve_requests_total{task="deep5",endpoint="predict",status="200"}' in metrics
        assert "vpt_serve_tasks_resident 4" in metrics
        # multipart upload, top_k
        with open(paths[0], "rb") as f:
            img = f.read()
        boundary = "vptboundary"
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\ndeep3\r\n--{boundary}\r\n"
                f"Content-Disposition: form-data; name=\"top_k\"\r\n\r\n2\r\n--{boundary}\r\nContent-Disposition: "
                f"form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + img + \
            f"\r\n--{boundary}--\r\n".encode()
        status, ans = call(url + "/predict", form, ctype=f"multipart/form-data; boundary={boundary}")
        assert status == 200 and len(ans["predictions"]) == 2
        same(ans["predictions"], cli["deep3"][paths[0]][:2])

        # --- OIP v2 ----------------------------------------------------------------------------------------
        assert call(url + "/v2/health/ready") == (200, {"ready": True})
        status, meta = call(url + "/v2/models/deep5")
        assert status == 200 and meta["name"] == "deep5" and meta["inputs"][0]["datatype"] == "BYTES"
        assert meta["parameters"]["classes"] == ["yes", "no"]
        req = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                       "data": [b64(paths[0]), b64(paths[1])]}], "parameters": {"top_k": 2}}
        status, res = call(url + "/v2/models/deep5/infer", req)
        assert status == 200 and res["id"] == "r1" and res["model_name"] == "deep5"
        out = {o["name"]: o for o in res["outputs"]}
        assert out["score"]["shape"] == [2, 2] and out["label"]["datatype"] == "BYTES"
        for i, p in enumerate(paths[:2]):
            want = cli["deep5"][p]
            assert out["label"]["data"][2 * i:2 * i + 2] == [w[0] for w in want]
            assert out["score"]["data"][2 * i:2 * i + 2] == pytest.approx([w[2] for w in want], abs=2e-6)
        # the binary tensor data extension (tritonclient.http's default): a JSON header, then raw BYTES
        blob = b"".join(struct.pack("<I", len(open(p, "rb").read())) + open(p, "rb").read() for p in paths[:2])
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                       "parameters": {"binary_data_size": len(blob)}}]}).encode()
        status, res2 = call(url + "/v2/models/deep5/infer", head + blob, ctype="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(head))})
        assert status == 200, res2
        assert {o["name"]: o for o in res2["outputs"]}["label"]["data"][:2] == [w[0] for w in cli["deep5"][paths[0]]]
        # repository: unload -> 404, load (remembered path) -> served again
        assert call(url + "/v2/repository/models/deep5/unload", b"", headers=auth)[0] == 200
        status, err = call(url + "/v2/models/deep5/infer", req)
        assert status == 404 and "deep3" in err["error"]
        index = call(url + "/v2/repository/index", b"")[1]
        assert {"name": "deep5", "version": "1", "state": "UNAVAILABLE"} in index
        assert call(url + "/v2/repository/models/deep5/load", b"", headers=auth)[0] == 200
        assert call(url + "/v2/models/deep5/infer", req)[0] == 200

        # --- admin: token, --task-root containment ---------------------------------------------------------
        put = lambda name, path, h=auth: call(url + f"/tasks/{name}", {"path": path}, method="PUT", headers=h)  # noqa
        assert put("new", "deep3", {})[0] == 401
        assert put("new", "deep3", {"Authorization": "Bearer wrong-token-000000"})[0] == 401
        status, err = put("new", "../outside")
        assert status == 403 and ".." in err["error"]
        assert put("new", s["outside"])[0] == 403
        status, err = put("new", "link_out")
        assert status == 403 and "outside --task-root" in err["error"]
        assert put("new", "missing")[0] == 422
        status, ans = put("new", "deep3")  # a relative path, under --task-root
        assert status == 201 and ans["task"]["name"] == "new" and ans["task"]["trainable_parameters"] > 0
        tasks = call(url + "/tasks")[1]["tasks"]
        assert [t["name"] for t in tasks] == ["deep3", "deep5", "linear", "new", "other"]
        assert {t["name"]: t["classes"] for t in tasks}["new"] == ["cat", "dog", "frog"]
        status, ans = call(url + "/predict", {"task": "new", "image": b64(paths[0]), "top_k": 10})
        assert status == 200
        same(ans["predictions"], cli["deep3"][paths[0]])
        assert call(url + "/tasks/new", method="DELETE", headers=auth)[0] == 200
        status, err = call(url + "/predict", {"task": "new", "image": b64(paths[0])})
        assert status == 404 and "Loaded tasks: deep3, deep5, linear, other" in err["error"]

        # --- every bad input: its 4xx, then the server still answers a good request -------------------------
        good = {"task": "linear", "image": b64(paths[0])}
        truncated = base64.b64encode(open(paths[0], "rb").read()[:60]).decode()
        bad = [
            ({"task": "deep3", "image": base64.b64encode(b"not an image").decode()}, None, 400, "not a readable image"),
            ({"task": "deep3", "image": truncated}, None, 400, "not a readable image"),
            ({"task": "deep33", "image": b64(paths[0])}, None, 404, "did you mean 'deep3'"),
            ({"task": "deep3", "image": base64.b64encode(bomb_png()).decode()}, None, 413, "pixels"),
            (b"task=deep3", "text/plain", 415, "content type"),
            (b"{not json", None, 422, "malformed JSON"),
            ({"task": "deep3"}, None, 422, "base64"),
            ({"image": b64(paths[0])}, None, 422, "task"),
            ({"task": "deep3", "image": "%%%"}, None, 422, "base64"),
            ({"task": "deep3", "image": b64(paths[0]), "top_k": 0}, None, 422, "top_k"),
            ({"task": "deep3", "image": b64(paths[0]), "topk": 3}, None, 422, "unknown field"),
            ([1, 2], None, 422, "JSON object"),
        ]
        for body, ctype, want, words in bad:
            status, err = call(url + "/predict", body, ctype=ctype or "application/json")
            assert status == want and words in err["error"], (body if len(str(body)) < 200 else "...", status, err)
            assert call(url + "/predict", good)[0] == 200
        # a body over --max-body-mb is refused from its Content-Length before any of it is read (sending the 2 MB
        # too would race the server's early answer and close: a broken pipe on the client's side)
        status, err = call_headers_only(url + "/predict", 2 * 1024 * 1024)
        assert status == 413 and "limit" in err["error"], (status, err)
        assert call(url + "/predict", good)[0] == 200
        # a client that disconnects mid-request (promised 1000 bytes, sent 10)
        host, port = url.rsplit(":", 1)
        with socket.create_connection(("127.0.0.1", int(port))) as c:
            c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"task\": ")
        assert call(url + "/predict", good)[0] == 200
        status, metrics = call(url + "/metrics")
        assert 'vpt_serve_errors_total{task="deep3",status="400"} 2' in metrics

        # --- SIGTERM: in-flight requests finish, exit 0 ------------------------------------------------------
        with cf.ThreadPoolExecutor(8) as ex:
            futs = [ex.submit(call, url + "/predict", {"task": "deep5", "image": b64(p)}) for p in paths]
            time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futs]
        assert all(st == 200 for st, _ in results), results
        assert proc.wait(90) == 0
    finally:
        kill_tree(proc)
        log.close()


@SERVER[0]
@SERVER[1]
@pytest.mark.skipif(sys.platform == "win32", reason="Ray Serve on loopback, POSIX")
def test_ray_engine_answers_as_litserve(setup, tmp_path):
    pytest.importorskip("ray.serve", reason="vpt serve --engine ray needs the [ray] extra: pip install 'vpt[ray]'")
    s, d = setup, setup["dirs"]
    tasks = ["--task", f"deep3={d['deep3']}", "--task", f"linear={d['linear']}"]
    logs = [open(tmp_path / "lit.log", "w"), open(tmp_path / "ray.log", "w")]
    lit, lit_url = start(tasks, logs[0])  # no --admin-token-file: admin calls refused
    ray, ray_url = start(tasks + ["--engine", "ray"], logs[1])
    try:
        wait_ready(lit, lit_url, logs[0])
        wait_ready(ray, ray_url, logs[1], timeout=300)
        paths = images(s)
        jobs = [(t, p) for p in paths for t in ("deep3", "linear")]

        def ask(u):
            with cf.ThreadPoolExecutor(8) as ex:
                return list(ex.map(lambda j: call(u + "/predict", {"task": j[0], "image": b64(j[1]), "top_k": 10}),
                                   jobs))
        a, b = ask(lit_url), ask(ray_url)
        assert all(st == 200 for st, _ in a + b)
        for (_, x), (_, y) in zip(a, b):
            assert [p["label"] for p in x["predictions"]] == [p["label"] for p in y["predictions"]]
            assert [p["score"] for p in x["predictions"]] == pytest.approx([p["score"] for p in y["predictions"]],
                                                                           abs=2e-6)
        req = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(paths[0])]}]}
        assert call(ray_url + "/v2/models/deep3/infer", req)[1]["outputs"] == \
            call(lit_url + "/v2/models/deep3/infer", req)[1]["outputs"]
        assert call(ray_url + "/predict", {"task": "deep", "image": b64(paths[0])})[0] == 404
        status, err = call(lit_url + "/tasks/x", {"path": "y"}, method="PUT")
        assert status == 403 and "--admin-token-file" in err["error"]
        assert call(ray_url + "/tasks/x", {"path": "y"}, method="PUT")[0] == 403
        for p in (lit, ray):
            p.send_signal(signal.SIGTERM)
        assert lit.wait(90) == 0 and ray.wait(120) == 0
    finally:
        for p in (lit, ray):
            kill_tree(p)
        for f in logs:
            f.close()


def test_serve_flags_are_checked_before_starting(setup, capsys, tmp_path):
    d = setup["dirs"]
    for argv, words in [(["--task", "deep3"], "NAME=ARTIFACT"),
                        (["--task", f"base={d['deep3']}"], "not 'base'"),
                        (["--task", f"a={d['deep3']}", "--task", f"a={d['deep5']}"], "duplicate"),
                        (["--task", f"a={tmp_path}"], f"a={tmp_path}"),
                        (["--task", f"a={d['deep3']}", "--host", "10.0.0.1"], "--host"),
                        (["--task", f"a={d['deep3']}", "--admin-token-file", str(tmp_path / "none")], "can't be read"),
                        ([], "nothing to serve")]:
        capsys.readouterr()
        assert main(["serve", *argv]) == 2
        assert words in capsys.readouterr().err
