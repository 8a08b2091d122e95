"""The ``vpt`` command line as shell users meet it: a reader that closes the pipe early (``vpt list | head -1``)
ends vpt quietly with the documented status, and ``vpt --help`` documents the exit codes."""
import os
import subprocess
import sys

import pytest
from helpers import TINY_VIT, TINY_VIT_NAME

import vpt
from vpt.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env():
    e = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
             NO_ALBUMENTATIONS_UPDATE="1")
    return e


def closed_pipe(*argv, stderr_too=False):
    """Run ``python -m vpt ARGV`` with its stdout a pipe whose reader has already gone (what ``| head -1``
    becomes once head has its line): every write vpt makes fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "vpt", *argv], stdout=w,
                           stderr=w if stderr_too else subprocess.PIPE, env=env(), timeout=120)
    finally:
        os.close(w)
    return p.returncode, (p.stderr or b"").decode()


def test_closed_pipe_ends_quietly_with_141():
    rc, err = closed_pipe("list")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == "" and rc == 141


def test_closed_pipe_with_stderr_merged_ends_quietly():
    # `vpt list 2>&1 | head -1`: stderr is the same broken pipe; no second error on the way out
    rc, _ = closed_pipe("list", stderr_too=True)
    assert rc == 141


def test_inspect_json_into_a_reader_that_left(tmp_path):
    """`vpt inspect --json ART | true` through a real shell pipe: the reader exits before vpt has finished
    importing, so vpt's first write meets a closed pipe (as a long output does with `| head -1`)."""
    m = vpt.create_model(TINY_VIT_NAME, prompt="vpt_deep", num_classes=2, class_names=["a", "b"],
                         pretrained=False, model_kwargs=TINY_VIT)
    art = str(tmp_path / "art")
    m.save_pretrained(art)
    script = f"set -o pipefail; {sys.executable} -m vpt inspect --json {art} | true; echo rc=$? >&2"
    p = subprocess.run(["bash", "-c", script], capture_output=True, env=env(), timeout=120)
    err = p.stderr.decode()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert err.strip().splitlines()[-1] == "rc=141"


def test_help_documents_exit_codes():
    text = build_parser().format_help()
    for line in ("0    success", "2    user error", "130  interrupted", "141  the program reading"):
        assert line in text
