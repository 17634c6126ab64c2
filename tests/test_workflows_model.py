"""The workflow model: window batches with exact resume, training on the shared loop (resume, overfitting check),
constrained sampling that is always schema-valid, unconstrained sampling reported, and the evaluation JSON."""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch

from conftest import nanoforge
from nanoforge.cli import main
from nanoforge.tokenizer.schema import SchemaTokenizer
from nanoforge.workflows.canonical import canonical_json, parse_document
from nanoforge.workflows.evaluate import key_fields, total_variation
from nanoforge.workflows.prepare import load_windows
from nanoforge.workflows.windows import WindowBatches, split_documents

# A model that trains a few dozen steps in seconds on one CPU core; windows of 128 tokens.
TINY = [
    "model.depth=2", "model.n_embd=64", "model.n_head=2", "model.head_dim=32", "model.vocab_size=1024",
    "model.sequence_len=128", "model.dropout=0.0", "train.device_batch_size=8", "train.total_batch_size=1024",
    "train.warmup_steps=5", "train.adamw_lr=0.003", "train.eval_every=0", "train.sample_every=0",
    "train.log_every=10", "metrics.prometheus=none", "hardware.gpu=cpu",
]


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf-prepared")
    code = main(["workflows", "prepare", "--input", str(shared_data / "workflows" / "starter"), "--output", str(out),
                 "--context-size", "128", "--vocab-size", "1024"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("wf-run") / "run"
    nanoforge("workflows", "train", "--run-dir", str(run), "--data", str(prepared),
              *sets(*TINY, "train.num_iterations=30", "train.save_every=15"))
    return run


@pytest.fixture(scope="module")
def workflow_schema(shared_data):
    return json.loads((shared_data / "schemas" / "github-workflow.latest.json").read_text())


def batches(windows, rank, grad_accum, slots, state=None):
    return WindowBatches(windows, 3, rank, grad_accum, slots, "cpu", pad_id=0, seed=7, state=state)


def test_window_batches_resume_exactly_and_do_not_depend_on_world_size():
    rng = np.random.default_rng(0)
    windows = rng.integers(1, 50, size=(11, 9)).astype(np.int32)
    windows[3, 5:] = 0  # a padded tail
    one = batches(windows, 0, 2, 2)
    steps = [[one.next_batch(a) for a in range(2)] for _ in range(5)]  # 30 rows of 11: crosses epochs
    saved = one.state_dict()
    after = [[one.next_batch(a) for a in range(2)] for _ in range(4)]

    resumed = batches(windows, 0, 2, 2, state=saved)
    for step in after:
        for a, (x, y) in enumerate(step):
            rx, ry = resumed.next_batch(a)
            assert torch.equal(x, rx) and torch.equal(y, ry)

    # two ranks with one micro-step each read the same slots as one rank with two
    ranks = [batches(windows, r, 1, 2) for r in range(2)]
    for step in steps:
        for r in range(2):
            x, y = ranks[r].next_batch(0)
            assert torch.equal(x, step[r][0]) and torch.equal(y, step[r][1])

    x, y = steps[0][0]
    assert x.shape == (3, 8) and y.shape == (3, 8)
    # every window appears once per epoch in a slot's stream; PAD targets are not trained
    first_epoch = [tuple(row) for step in steps for row in step[0][0].tolist()][:11]
    assert len(set(first_epoch)) == 11
    assert (torch.cat([s[a][1] for s in steps for a in range(2)]) != 0).all()


def test_validation_documents_rebuilt_from_windows(prepared, shared_data):
    tok = SchemaTokenizer.load(prepared / "tokenizer")
    meta = json.loads((prepared / "metadata.json").read_text())
    docs = split_documents(load_windows(prepared, "val"), tok)
    names = meta["documents"]["val"]
    assert len(docs) == len(names)
    for doc, name in zip(docs, names):
        text = (shared_data / "workflows" / "starter" / name).read_text()
        expected = canonical_json(parse_document(text))
        assert doc.canonical_bytes == len(expected.encode("utf-8"))
        assert doc.ids[-1] == tok.eos_id and tok.decode(doc.ids) == expected


def test_training_resumes_exactly_from_a_checkpoint(prepared, tmp_path):
    args = sets(*TINY, "model.dropout=0.1", "train.num_iterations=6", "train.save_every=3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    nanoforge("workflows", "train", "--run-dir", str(straight), "--data", str(prepared), *args)
    nanoforge("workflows", "train", "--run-dir", str(resumed), "--data", str(prepared), *args)
    stage = resumed / "checkpoints" / "workflows"
    shutil.rmtree(stage / "step-000006")
    (stage / "DONE").unlink()
    out = nanoforge("workflows", "train", "--run-dir", str(resumed), "--data", str(prepared), *args)
    assert "resuming workflows from" in out.stdout and "step 3/6" in out.stdout
    a = torch.load(straight / "checkpoints" / "workflows" / "step-000006" / "model.pt")
    b = torch.load(stage / "step-000006" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = nanoforge("workflows", "train", "--run-dir", str(resumed), "--data", str(prepared), *args)
    assert "already done" in again.stdout
    assert (resumed / "workflows_tokenizer" / "schema_tokenizer.json").exists()


def test_overfits_ten_windows(prepared, tmp_path):
    run = tmp_path / "run"
    out = nanoforge("workflows", "train", "--run-dir", str(run), "--data", str(prepared), "--train-samples", "10",
                    *sets(*TINY, "train.device_batch_size=10", "train.total_batch_size=1280", "train.adamw_lr=0.01",
                          "train.weight_decay=0.0", "train.num_iterations=100", "train.save_every=0"))
    lines = [json.loads(line) for line in (run / "metrics" / "workflows.jsonl").read_text().splitlines()]
    losses = [rec["values"]["loss"] for rec in lines if rec["kind"] == "train"]
    assert losses[-1] < 0.1, losses
    assert any(line.startswith("step 100/100 | loss") and " | $" in line for line in out.stdout.splitlines())


def test_constrained_samples_are_schema_valid_and_unconstrained_are_reported(trained, workflow_schema, tmp_path):
    validator = jsonschema.Draft7Validator(workflow_schema)
    out = nanoforge("workflows", "sample", "--run-dir", str(trained), "--n", "12", "--seed", "3",
                    "--out", str(tmp_path / "c"))
    assert "n 12, valid 12 (100.0%)" in out.stdout
    files = sorted((tmp_path / "c").glob("constrained-*.yml"))
    assert len(files) == 12 and not any("invalid" in f.name for f in files)
    for path in files:
        value = parse_document(path.read_text(encoding="utf-8"))
        errors = list(validator.iter_errors(value))
        assert not errors, (path.name, errors[0].message)

    out = nanoforge("workflows", "sample", "--run-dir", str(trained), "--n", "12", "--unconstrained",
                    "--out", str(tmp_path / "u"))
    summary = json.loads((tmp_path / "u" / "unconstrained-summary.json").read_text())
    assert summary["n"] == 12 and 0 <= summary["valid"] <= 12 and "unconstrained samples" in out.stdout
    assert sum(summary["invalid_reasons"].values()) == 12 - summary["valid"]


def test_evaluate_writes_its_json(trained):
    out = nanoforge("workflows", "evaluate", "--run-dir", str(trained), "--n", "6")
    result = json.loads((trained / "workflows_eval.json").read_text())
    assert result["constrained"]["validity"] == 1.0 and result["constrained"]["n"] == 6
    assert 0.0 <= result["unconstrained"]["validity"] <= 1.0
    v = result["validation"]
    assert v["documents"] == 35 and 0 < v["val_bpb"] < 20 and v["val_loss"] > 0
    for name in ("events", "runs-on", "uses"):
        tvd = result["key_fields"][name]["tvd"]
        assert tvd is None or 0.0 <= tvd <= 1.0
    assert "bits per canonical byte" in out.stdout


def test_key_fields_and_distance():
    doc = {"on": {"push": None, "schedule": [{"cron": "0 0 * * *"}]},
           "jobs": {"a": {"runs-on": ["self-hosted", "linux"], "steps": [{"uses": "actions/checkout@v4"},
                                                                            {"run": "make"}]},
                    "b": {"uses": "org/repo/.github/workflows/x.yml@main"}}}
    fields = key_fields(doc)
    assert fields == {"events": ["push", "schedule"], "runs-on": ["self-hosted", "linux"],
                      "uses": ["actions/checkout", "org/repo/.github/workflows/x.yml"]}
    from collections import Counter

    assert total_variation(Counter(a=1, b=1), Counter(a=2)) == pytest.approx(0.5)
    assert total_variation(Counter(a=1), Counter(b=3)) == pytest.approx(1.0)
    assert total_variation(Counter(), Counter(a=1)) is None


def test_bad_input_exits_2(tmp_path, prepared):
    proc = nanoforge("workflows", "train", "--run-dir", str(tmp_path / "r"), "--data", str(tmp_path / "nope"),
                     check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (tmp_path / "r").exists()
    proc = nanoforge("workflows", "train", "--run-dir", str(tmp_path / "r"), "--data", str(prepared),
                     *sets("model.sequence_len=64"), check=False)
    assert proc.returncode == 2 and "model.sequence_len" in proc.stderr and not (tmp_path / "r").exists()
    proc = nanoforge("workflows", "sample", "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "no workflow tokenizer" in proc.stderr


def test_memmap_windows_give_the_same_batches_as_pt(prepared, shared_data, tmp_path):
    out = tmp_path / "mm"
    code = main(["workflows", "prepare", "--input", str(shared_data / "workflows" / "starter"), "--output", str(out),
                 "--context-size", "128", "--format", "memmap", "--tokenizer", str(prepared / "tokenizer")])
    assert code == 0
    mm, pt = load_windows(out, "train"), load_windows(prepared, "train")
    assert isinstance(mm, np.memmap) and mm.shape == pt.shape
    a, b = batches(mm, 0, 1, 1), batches(pt, 0, 1, 1)
    for _ in range(3):
        (xa, ya), (xb, yb) = a.next_batch(0), b.next_batch(0)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    tok = SchemaTokenizer.load(prepared / "tokenizer")
    assert [d.ids for d in split_documents(load_windows(out, "val"), tok)] == \
        [d.ids for d in split_documents(load_windows(prepared, "val"), tok)]
