"""Issue 17, the training parts (on the one engine): a bad run never passes as good, one run per output folder,
only vpt's files touched, and resumes that can't silently mix runs."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_image_folder, tiny_recipe
from vpt.cli import main
from vpt.engine.rundir import prepare_run_dir
from vpt.errors import RunDirError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=8)


def _common(tmp_path, data, **train):
    recipe = tiny_recipe(tmp_path / "r.yaml", **train)
    return ["train", "-c", recipe, "--data", data, "--set", "data.val_fraction=0.125"]


# --- a bad run never passes as good -----------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "-inf")])
def test_non_finite_settings_refused_at_parse_time(tmp_path, data, capsys, flag, value):
    rc = main(_common(tmp_path, data, epochs=1) + [f"{flag}={value}", "--output", str(tmp_path / "run")])
    assert rc == 2 and "must be a finite number" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_out_of_range_settings_refused(tmp_path, data, capsys):
    rc = main(_common(tmp_path, data, epochs=1) + ["--set", "optim.momentum=1.5", "--output", str(tmp_path / "run")])
    assert rc == 2 and "optim.momentum must be in [0, 1)" in capsys.readouterr().err


def test_divergence_stops_with_a_message_and_saves_nothing_non_finite(tmp_path, data, capsys):
    run = str(tmp_path / "run")
    rc = main(_common(tmp_path, data, epochs=2, batch_size=6, log_interval=1)
              + ["--lr", "1e30", "--set", "optim.opt=sgd", "--output", run])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "training diverged at step" in err and "lower the learning rate" in err and "--lr 1e+29" in err
    assert not os.path.exists(os.path.join(run, "results.json"))  # never reported as a finished run
    for sub in ("best", "last"):  # nothing non-finite was written as an artifact
        p = os.path.join(run, sub, "adapter_model.safetensors")
        if os.path.exists(p):
            assert all(torch.isfinite(t).all() for t in load_file(p).values())
    state = torch.load(os.path.join(run, "run_state.pt"), weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(t).all() for t in state["trainable"].values())


def test_fp16_grad_scaler_skipped_steps_are_not_divergence(tmp_path, data, monkeypatch):
    """A scale so large that the first steps' gradients overflow: the scaler skips those steps and lowers the
    scale; the run must go on and finish, not be stopped as diverged."""
    skipped = []

    class HugeScale(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, init_scale=2.0 ** 127, **k)

        def update(self, new_scale=None):
            before = self.get_scale()
            super().update(new_scale)
            skipped.append(self.get_scale() < before)
    monkeypatch.setattr(torch.amp, "GradScaler", HugeScale)
    run = str(tmp_path / "run")
    assert main(_common(tmp_path, data, epochs=1, batch_size=6, log_interval=1)
                + ["--amp-dtype", "float16", "--output", run]) == 0
    assert any(skipped), "the test needs at least one skipped step"
    assert os.path.exists(os.path.join(run, "results.json"))


# --- one run per folder; only vpt's files touched -----------------------------------------------------------
def test_non_run_folder_with_vpt_names_is_never_written_over(tmp_path, data, capsys):
    out = tmp_path / "mine"
    for sub in ("best", "last"):
        (out / sub).mkdir(parents=True)
        (out / sub / "precious.txt").write_text("the user's")
    for extra in ([], ["--overwrite"]):
        rc = main(_common(tmp_path, data, epochs=1) + ["--output", str(out)] + extra)
        assert rc == 2 and "vpt never replaces files it did not write" in capsys.readouterr().err
    assert (out / "best" / "precious.txt").read_text() == "the user's"
    assert (out / "last" / "precious.txt").read_text() == "the user's"


def test_folder_with_other_files_needs_overwrite_and_keeps_them(tmp_path, data, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(_common(tmp_path, data, epochs=1) + ["--output", str(out)]) == 2
    assert "is not a vpt run and holds other files (notes.txt)" in capsys.readouterr().err
    assert main(_common(tmp_path, data, epochs=1) + ["--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep" and (out / ".vpt_run").is_file()
    # --overwrite of the run now removes vpt's files only
    assert main(_common(tmp_path, data, epochs=1) + ["--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep"


_HOLDER = textwrap.dedent("""
    import sys, time
    from vpt.engine.rundir import prepare_run_dir
    lock = prepare_run_dir(sys.argv[1], resume=True, command="vpt train (holder)")
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, folder], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
@pytest.mark.subprocess
def test_lock_second_process_refused_and_kill_9_does_not_block_resume(tmp_path, data, capsys):
    run = str(tmp_path / "run")
    prepare_run_dir(run).release()
    holder = _hold(run)
    try:
        with pytest.raises(RunDirError, match=f"in use by a running vpt train: process {holder.pid} on .*holder"):
            prepare_run_dir(run, resume=True)
        assert main(_common(tmp_path, data, epochs=1) + ["--output", run, "--overwrite"]) == 2  # a 2nd vpt train
        assert f"process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    prepare_run_dir(run, resume=True).release()  # the kernel dropped the dead holder's lock


# --- resume ------------------------------------------------------------------------------------------------
def _tensors(path):
    return load_file(os.path.join(path, "adapter_model.safetensors"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_killed_in_epoch_1_resumes_to_the_same_result(tmp_path, data):
    common = _common(tmp_path, data, epochs=2, batch_size=6)  # 3 steps / epoch
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main(common + ["--output", full]) == 0
    pid = os.fork()
    if pid == 0:  # child: SIGKILLed by the CLI's test hook after its 2nd step (epoch 1 of 2)
        try:
            os.environ["VPT_TEST_KILL_AT_STEP"] = "2"
            torch.set_num_threads(1)
            main(common + ["--output", cut])
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert torch.load(os.path.join(cut, "run_state.pt"), weights_only=True)["epoch"] == 0
    assert main(["train", "--resume", "--output", cut]) == 0
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (full, cut))
    def no_timing(m):
        return {k: v for k, v in m.items() if k != "images_per_second"}
    assert a["best_epoch"] == b["best_epoch"] and no_timing(a["val"]) == no_timing(b["val"])
    ta, tb = _tensors(os.path.join(full, "best")), _tensors(os.path.join(cut, "best"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow
def test_resume_refuses_other_data_or_model_config(tmp_path, data, capsys):
    run = str(tmp_path / "run")
    assert main(_common(tmp_path, data, epochs=2) + ["--output", run]) == 0
    other = make_image_folder(tmp_path / "other", per_class=5, seed=3)
    assert main(["train", "--resume", "--output", run, "--data", other]) == 2
    err = capsys.readouterr().err
    assert "the data differs from the run's" in err and "train 21 -> 12" in err
    assert main(["train", "--resume", "--output", run, "--set", "model.prompt.num_tokens=3"]) == 2
    assert "model.prompt.num_tokens: 2 in the run, 3 now" in capsys.readouterr().err
    assert main(["train", "--resume", "--output", run]) == 0  # the same data and model: fine


def test_stale_tmp_files_cleaned_and_user_files_kept(tmp_path, data):
    run = tmp_path / "run"
    assert main(_common(tmp_path, data, epochs=1) + ["--output", str(run)]) == 0
    (run / ".run_state.pt.k2j3.tmp").write_bytes(b"half a state")
    (run / ".best.x8f.tmp").mkdir()
    (run / ".best.x8f.tmp" / "adapter_config.json").write_text("{")
    (run / ".my_notes.tmp").write_text("the user's")
    assert main(["train", "--resume", "--output", str(run)]) == 0
    left = sorted(os.listdir(run))
    assert ".run_state.pt.k2j3.tmp" not in left and ".best.x8f.tmp" not in left
    assert (run / ".my_notes.tmp").read_text() == "the user's"
