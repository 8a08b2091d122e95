"""benchmarks/make_table.py: lr chosen on the grid seed's val, mean ± std over seeds, the prompt-minus-linear
table against the random-init control, smoke runs folded away."""
import json
import os

import make_table  # benchmarks/ is on the test path (pyproject: tool.pytest.ini_options.pythonpath)


def rec(tag, task, arm, lr, seed, val, test, scale="e10", control=False):
    return {"benchmark": "transfer", "scale": scale, "tag": tag, "task": task, "arm": arm, "lr": lr, "seed": seed,
            "grid_seed": 0, "val_top1": val, "test_top1": test, "trainable_percent": 0.5, "train_seconds": 10.0,
            "epochs": 10, "device": "cpu", "control": control, "backbone_weights_sha256": "x",
            "config": {"model": {"backbone": {"name": "vpt:vit_tiny_cifar10"}}}}


def write(root, records):
    for i, r in enumerate(records):
        d = os.path.join(root, r["scale"], r["tag"], r["task"], r["arm"])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i}.json"), "w") as f:
            json.dump(r, f)


def test_tables(tmp_path):
    recs = []
    for tag, control, base in (("m", False, 60.0), ("m-control", True, 30.0)):
        for task, shift in (("mnist", 0.0), ("elpv", 10.0)):
            # linear: lr 0.1 wins on val (seed 0), then seeds 1, 2 at 0.1; lr 0.01 loses on val
            recs.append(rec(tag, task, "linear", 0.01, 0, 40.0, 99.0, control=control))
            for seed, d in ((0, -1.0), (1, 0.0), (2, 1.0)):
                recs.append(rec(tag, task, "linear", 0.1, seed, 50.0, base + shift + d, control=control))
                gain = 2.0 if not control else -0.5
                recs.append(rec(tag, task, "vpt_deep", 0.03, seed, 50.0, base + shift + gain + d, control=control))
    recs.append(rec("s", "mnist", "linear", 0.1, 0, 10.0, 10.0, scale="smoke"))
    write(tmp_path, recs)
    text = make_table.render(make_table.load(str(tmp_path)))
    assert "| mnist | 60.0 ± 1.0 <sub>lr 0.1</sub> | 62.0 ± 1.0 <sub>lr 0.03</sub> |" in text  # not the 99.0 run
    assert "| elpv | 70.0 ± 1.0 <sub>lr 0.1</sub> |" in text
    assert "| **mean** | 65.0 | 67.0 |" in text
    assert "| mnist | +2.0 / -0.5 |" in text and "| **mean** | +2.0 / -0.5 |" in text
    # measured scales first, smoke folded below them
    assert text.index("**m**") < text.index("**m-control**") < text.index("<details>") < text.index("**s**")


def test_results_of_earlier_shipped_weights_are_marked(tmp_path, monkeypatch):
    from vpt.weights import SHIPPED
    recs = [rec("m", "mnist", "linear", 0.1, 0, 50.0, 60.0)]
    recs[0]["backbone_weights_sha256"] = SHIPPED["vit_tiny_cifar10"]["sha256"]
    assert "earlier weights" not in make_table.render(recs)
    monkeypatch.setitem(SHIPPED, "vit_tiny_cifar10", {**SHIPPED["vit_tiny_cifar10"], "sha256": "f" * 64})
    assert "made with earlier weights of vpt:vit_tiny_cifar10" in make_table.render(recs)
