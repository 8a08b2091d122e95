"""benchmarks/gpu_suite.sh: refuses clearly without a GPU; --cpu-smoke runs its stages at toy sizes and writes
the JSON a GPU run writes."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils timeout")]


def run(args, out, **env):
    e = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", **env)
    if out is not None:
        e["OUT"] = str(out)
    else:
        e.pop("OUT", None)
    return subprocess.run(["bash", SUITE, *args], env=e, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_gpu(tmp_path):
    r = run([], tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert "no CUDA GPU" in r.stderr and "--cpu-smoke" in r.stderr
    assert not (tmp_path / "out" / "gpu_suite.json").exists()


def test_refuses_without_out_and_unknown_arguments(tmp_path):
    r = run([], None)
    assert r.returncode == 2 and "set OUT" in r.stderr
    r = run(["--cpu-smok"], tmp_path)
    assert r.returncode == 2 and "unknown argument '--cpu-smok'" in r.stderr


@pytest.mark.slow
def test_cpu_smoke_writes_every_stage(tmp_path):
    out = tmp_path / "out"
    r = run(["--cpu-smoke"], out)
    assert r.returncode == 0, r.stderr[-3000:]
    suite = json.loads((out / "gpu_suite.json").read_text())
    assert suite["mode"] == "cpu-smoke"
    ran = {s["stage"]: s for s in suite["stages"]}
    assert {"ab_kv", "speed", "energy"} <= {n for n, s in ran.items() if s.get("rc") == 0}
    assert "GPU only" in ran["speed_compile"]["skipped"]
    ab = json.loads((out / "ab_kv_cpu.json").read_text())
    assert {"train_vpt_deep", "infer_vpt_prefix", "infer_mixed_tasks"} <= set(ab)
    energy = json.loads((out / "energy_cpu.json").read_text())
    assert energy["energy_unavailable"] and energy["arms"]["vpt_deep"]["joules_per_step"] is None
    assert "train.fp8 needs a CUDA GPU" in energy["skipped"]["vpt_deep_fp8"]
    speed = json.loads((out / "speed_cpu.json").read_text())
    assert speed["inference"]["vpt_deep"]["img_per_s"] > 0
