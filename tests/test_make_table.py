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


def sweep_rec(task, arm, lr, test, std=1.0, edge=None, tag="m"):
    """A record whose lr lies inside its space, or on its high edge (edge='high'), or on its low edge tied
    with the value inside it (edge='tie': a plateau, not reported as an edge)."""
    values = {None: [lr / 10, lr, lr * 10], "high": [lr / 100, lr / 10, lr], "tie": [lr, lr * 10, lr * 100]}[edge]
    vals = [50.0 if v == lr or (edge == "tie" and v == lr * 10) else 40.0 for v in values]
    return {"space": {"optim.lr": {"values": values}},
            "trials": [{"number": i, "state": "COMPLETE", "params": {"optim.lr": v}, "value": x}
                       for i, (v, x) in enumerate(zip(values, vals))],
            "benchmark": "transfer_sweep", "scale": "e10", "tag": tag, "setup": "vit_tiny_cifar10", "control": False,
            "task": task, "arm": arm, "epochs": 10, "space_file": "benchmarks/transfer_configs/spaces/head.yaml",
            "sampler": "grid", "pruner": "median", "budget": 6, "best": {"params": {"optim.lr": lr}, "val": 50.0},
            "edges": {"high": {"optim.lr": "high"}, "tie": {"optim.lr": "low"}}.get(edge, {}), "test_top1_mean": test, "test_top1_std": std, "test_n": 3,
            "trainable_percent": 0.5, "final_runs": [{"train_seconds": 10.0}] * 3, "device": "cpu",
            "backbone_weights_sha256": "x", "config": {"model": {"backbone": {"name": "vpt:vit_tiny_cifar10"}}}}


def test_sweep_tables(tmp_path):
    old = [rec("m", "mnist", "linear", 0.1, s, 50.0, 60.0 + s) for s in (0, 1, 2)]  # before: 61.0 at lr 0.1
    old.append(rec("m", "mnist", "linear", 0.01, 0, 40.0, 99.0))  # lost on val: not the "before"
    sweeps = [sweep_rec("mnist", "linear", 0.3, 62.5), sweep_rec("mnist", "full", 3e-4, 80.0),
              sweep_rec("mnist", "vpt_deep", 1.0, 70.0, edge="high"),
              sweep_rec("mnist", "pixel_pad", 0.1, 60.0, edge="tie"), sweep_rec("elpv", "linear", 0.01, 70.0)]
    write(tmp_path, old)
    for r in sweeps:  # the layout transfer_sweep.py writes: sweep/<scale>/<tag>/<task>/<arm>.json
        d = tmp_path / "sweep" / r["scale"] / r["tag"] / r["task"]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{r['arm']}.json").write_text(json.dumps(r))
    assert len(make_table.load(str(tmp_path))) == 4  # the old table ignores sweep records, and back
    loaded = make_table.load_sweeps(str(tmp_path))
    assert len(loaded) == 5
    text = make_table.render_sweeps(loaded, make_table.load(str(tmp_path)))
    assert "**partial**: 5 of 35 (task, arm) sweeps finished" in text
    assert "| mnist | 62.5 ± 1.0 <sub>lr 0.3</sub> | 80.0 ± 1.0 <sub>lr 0.0003</sub> | 70.0 ± 1.0 <sub>lr 1, **edge**</sub> |" in text
    assert "| elpv | 70.0 ± 1.0 <sub>lr 0.01</sub> | – | – | – |" in text
    assert "| **mean** | 66.2 | – | – | – |" in text  # only linear has both tasks
    # pixel pad's lr 0.1 is its space's low edge, tied with 1.0 inside: a plateau, not an edge (the record's
    # own "edges", written by older code, is recomputed)
    assert "60.0 ± 1.0 <sub>lr 0.1</sub>" in text
    assert ("Optimum on the edge of the space (the best lr may lie beyond it): mnist vpt_deep (lr 1, high edge; "
            "val 50 vs 40 at lr 0.1, its neighbour).") in text
    assert "| mnist | 61.0 → 62.5 (+1.5) <sub>lr 0.1 → 0.3</sub> |" in text  # before/after: linear only
    assert "| mnist | +7.5 / -10.0 | -2.5 / -20.0 |" in text  # vpt_deep, pixel_pad minus linear / full
    assert ("- **mnist** (prompt arms not finished: vpt_shallow, vpt_prefix): pixel pad (-2.5) loses to linear probe "
            "(62.5); VPT-deep does not; every prompt arm loses to full fine-tuning (80.0), by 10.0-20.0 points.") in text
    # a CNN setup plans pixel prompts only: no note on token-prompt arms, and one arm reads as one
    cnn = {("mnist", "linear"): sweep_rec("mnist", "linear", 1.0, 88.9), ("mnist", "pixel_pad"): sweep_rec("mnist", "pixel_pad", 0.003, 90.5)}
    assert make_table.lose_sentences(cnn, ["pixel_pad"]) == [
        "- **mnist**: pixel pad does not lose to linear probe (88.9; +1.6)."]
    assert "**elpv**" not in text.split("where prompts lose")[1]  # no prompt arm finished there


def test_sweep_table_marks_cells_of_another_device():
    """A setup whose sweeps ran on two devices names both, marks the minority's cells with †, and keeps their
    training seconds in a row of their own (a GPU's seconds averaged with a CPU's would mean nothing)."""
    gpu = dict(sweep_rec("elpv", "linear", 0.01, 70.0), device="cuda:0 (NVIDIA H200)",
               final_runs=[{"train_seconds": 2.0}] * 3)
    cells = {("mnist", "linear"): sweep_rec("mnist", "linear", 0.3, 62.5),
             ("mnist", "full"): sweep_rec("mnist", "full", 3e-4, 80.0), ("elpv", "linear"): gpu}
    text = make_table.render_sweeps(list(cells.values()), [])
    assert "device: cpu for 2 sweeps; cuda:0 (NVIDIA H200) for elpv linear (marked †);" in text
    assert "| elpv | 70.0 ± 1.0 <sub>lr 0.01 †</sub> | – |" in text
    assert "| mnist | 62.5 ± 1.0 <sub>lr 0.3</sub> |" in text
    assert "| train s / final run | 10 | 10 |" in text  # mnist linear alone on the CPU row
    assert "| train s / final run (cuda:0 (NVIDIA H200), †) | 2 | – |" in text
    one = make_table.render_sweeps([sweep_rec("mnist", "linear", 0.3, 62.5)], [])
    assert "device: cpu;" in one and "†" not in one.split("\n\n", 1)[1]  # one device: no marks, one row


def test_write_fills_every_block(tmp_path, monkeypatch):
    (tmp_path / "bench.md").write_text("a\n<!-- transfer-table:start -->\nold\n<!-- transfer-table:end -->\nb\n"
                                       "<!-- transfer-sweep-table:start -->\nold\n<!-- transfer-sweep-table:end -->\nc\n")
    (tmp_path / "results.md").write_text("<!-- transfer-summary:start -->\nold\n<!-- transfer-summary:end -->\n")
    monkeypatch.setattr(make_table, "README", str(tmp_path / "bench.md"))
    monkeypatch.setattr(make_table, "RESULTS_DOC", str(tmp_path / "results.md"))
    d = tmp_path / "res" / "sweep" / "e10" / "m" / "mnist"
    d.mkdir(parents=True)
    (d / "linear.json").write_text(json.dumps(sweep_rec("mnist", "linear", 0.3, 62.5, tag="vit_tiny_cifar10")))
    assert make_table.main(["--root", str(tmp_path / "res"), "--write"]) == 0
    bench, root = (tmp_path / "bench.md").read_text(), (tmp_path / "results.md").read_text()
    assert "old" not in bench and "old" not in root and bench.endswith("c\n") and bench.startswith("a\n")
    assert "(no transfer results yet)" in bench and "| mnist | 62.5 ± 1.0 <sub>lr 0.3</sub> |" in bench
    assert "| mnist | 62.5 ± 1.0 <sub>lr 0.3</sub> |" in root and "Generated by" not in root.split("summary:start")[1]


def _block(path, start, end):
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    assert start in doc and end in doc, f"{path} lost its {start} ... {end} markers"
    return doc.split(start, 1)[1].split(end, 1)[0].strip("\n")


def test_committed_tables_match_the_committed_records():
    """The generated blocks live in benchmarks/README.md (every table) and docs/results.md (the summary), hold
    what ``make_table.py --write`` makes from the records in benchmarks/results/transfer/ (a record committed
    without rerunning --write fails here), and the root README carries no generated block."""
    old, sweeps = make_table.load(make_table.RESULTS), make_table.load_sweeps(make_table.RESULTS)
    assert old and sweeps
    assert make_table.RESULTS_DOC.endswith(os.path.join("docs", "results.md"))
    fix = "run `python benchmarks/make_table.py --write` and commit the result"
    assert _block(make_table.RESULTS_DOC, make_table.SUMMARY_START, make_table.SUMMARY_END) == \
        make_table.summary(sweeps, old), fix
    assert _block(make_table.README, make_table.START, make_table.END) == make_table.render(old), fix
    assert _block(make_table.README, make_table.SWEEP_START, make_table.SWEEP_END) == \
        make_table.render_sweeps(sweeps, old), fix
    root_readme = os.path.join(os.path.dirname(make_table.HERE), "README.md")
    with open(root_readme, encoding="utf-8") as f:
        assert "<!-- transfer-" not in f.read()


def test_peft_baselines_beside_the_prompts():
    """The method arms get their own table against each task's best prompt arm, and a method cell does not count
    towards (or hide) the setup's own arms being partial."""
    sweeps = [sweep_rec("mnist", "vpt_deep", 0.1, 77.7), sweep_rec("mnist", "pixel_pad", 0.3, 75.3),
              sweep_rec("mnist", "adaptformer", 0.03, 85.8), sweep_rec("mnist", "bitfit", 0.01, 70.0),
              sweep_rec("elpv", "linear", 0.01, 69.4)]
    text = make_table.render_sweeps(sweeps, [])
    assert "the PEFT baselines beside the prompts" in text
    assert "| task | best prompt arm | AdaptFormer | BitFit |" in text
    assert "| mnist | VPT-deep 77.7 | 85.8 (+8.1) | 70.0 (-7.7) |" in text
    assert "elpv" not in text.split("the PEFT baselines beside the prompts")[1].split("\n\n**")[0]
    assert "**partial**: 3 of 35 (task, arm) sweeps finished" in text
    assert "PEFT baselines" not in make_table.render_sweeps([sweep_rec("mnist", "linear", 0.3, 62.5)], [])
