"""CORE: the scorers on fixtures whose answer is known by construction (a bigram model made to prefer one
continuation), few-shot rendering and sampling, centering, and CORE end to end on a trained tiny model with the
real eval bundle through the CLI (also under torchrun: the same numbers from two ranks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import nanoforge
from nanoforge.eval.core import (CoreTask, centered, evaluate_core, evaluate_task, fewshot_indices, load_bundle,
                                 render_item, render_texts, score_item)


class NgramModel(nn.Module):
    """A lookup model: after the `order` tokens it was shown, it predicts the token that followed them (logit 12,
    every other token 0). The sequences it prefers are exactly the ones it was given, by construction. It has no
    KV cache, so it is scored with share_prefix=False."""

    def __init__(self, vocab_size: int, order: int = 3):
        super().__init__()
        self.vocab_size, self.order = vocab_size, order
        self.table: dict[tuple[int, ...], set[int]] = {}

    def prefer(self, ids: list[int]) -> "NgramModel":
        k = self.order
        for t in range(k - 1, len(ids) - 1):
            self.table.setdefault(tuple(ids[t - k + 1:t + 1]), set()).add(ids[t + 1])
        return self

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab_size)
        rows = idx.tolist()
        for b in range(B):
            for t in range(self.order - 1, T):
                for nxt in self.table.get(tuple(rows[b][t - self.order + 1:t + 1]), ()):
                    logits[b, t, nxt] = 12.0
        return logits


def task(kind: str, tmp_path: Path, items: list[dict], shots: int = 0, delimiter: str = " ",
         baseline: float = 0.25) -> CoreTask:
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return CoreTask(kind, kind, path, shots, delimiter, baseline)


MC_ITEMS = [
    {"query": "Question: Which animal barks?", "choices": ["a cat", "a dog", "a fish"], "gold": 1},
    {"query": "Question: What is frozen water?", "choices": ["ice", "steam", "sand"], "gold": 0},
    {"query": "Question: What colour is the sky?", "choices": ["green", "red", "blue"], "gold": 2},
    {"query": "Question: How many legs has a spider?", "choices": ["six", "eight", "four"], "gold": 1},
]


def model_preferring(tok, sequences: list[list[int]]) -> NgramModel:
    model = NgramModel(tok.vocab_size)
    for seq in sequences:
        model.prefer(seq)
    return model


def test_centering_maps_chance_to_zero_and_perfect_to_one():
    assert centered(0.25, 0.25) == 0.0
    assert centered(1.0, 0.25) == 1.0
    assert centered(0.625, 0.25) == pytest.approx(0.5)
    assert centered(0.0, 0.5) == -1.0
    assert centered(0.3, 0.0) == pytest.approx(0.3)


def test_fewshot_sampling_is_deterministic_excludes_the_item_and_varies():
    draws = [fewshot_indices(50, i, 5, seed=7, label="t") for i in range(50)]
    assert all(len(d) == 5 and i not in d and len(set(d)) == 5 for i, d in enumerate(draws))
    assert draws == [fewshot_indices(50, i, 5, seed=7, label="t") for i in range(50)]
    assert len({tuple(d) for d in draws}) > 40  # each item gets its own examples
    assert fewshot_indices(50, 3, 5, seed=8, label="t") != draws[3]
    assert sorted(fewshot_indices(3, 0, 10, seed=1, label="t")) == [1, 2]
    assert fewshot_indices(1, 0, 10, seed=1, label="t") == []


def test_fewshot_prompts_render_examples_then_the_item(tmp_path):
    mc = task("multiple_choice", tmp_path, MC_ITEMS, delimiter="\nAnswer: ")
    texts = render_texts(mc, MC_ITEMS[0], [MC_ITEMS[1], MC_ITEMS[2]])
    prefix = ("Question: What is frozen water?\nAnswer: ice\n\n"
              "Question: What colour is the sky?\nAnswer: blue\n\n"
              "Question: Which animal barks?\nAnswer: ")
    assert texts == [(prefix, "a cat"), (prefix, "a dog"), (prefix, "a fish")]

    schema_item = {"context_options": ["Tom gave Ann a gift because Tom", "Tom gave Ann a gift because Ann"],
                   "continuation": "was generous.", "gold": 0}
    schema = task("schema", tmp_path, [schema_item])
    assert render_texts(schema, schema_item, []) == [
        ("Tom gave Ann a gift because Tom ", "was generous."), ("Tom gave Ann a gift because Ann ", "was generous.")]

    lm_item = {"context": "The capital of France is", "continuation": " Paris"}
    lm = task("language_modeling", tmp_path, [lm_item])
    example = {"context": "2 + 2 =", "continuation": "4"}
    assert render_texts(lm, lm_item, [example]) == [("2 + 2 = 4\n\nThe capital of France is ", "Paris")]


def test_multiple_choice_picks_the_preferred_continuation(tok, dist, tmp_path):
    mc = task("multiple_choice", tmp_path, MC_ITEMS, shots=2)
    for item in MC_ITEMS:
        rendered = render_item(mc, item, [], tok, max_len=512)
        gold_seq = rendered.sequences[item["gold"]]
        assert score_item(model_preferring(tok, [gold_seq]), mc, rendered, dist.device, share_prefix=False) is True
        wrong = (item["gold"] + 1) % len(item["choices"])
        assert score_item(model_preferring(tok, [rendered.sequences[wrong]]), mc, rendered, dist.device, share_prefix=False) is False


def test_task_accuracy_is_exactly_one_or_zero_by_construction(tok, dist, tmp_path):
    """Few-shot prompts, cropped to a short context: the model knows every gold answer chain, so accuracy is 1;
    relabel every gold to another choice and it is exactly 0."""
    mc = task("multiple_choice", tmp_path, MC_ITEMS, shots=2, delimiter="\nAnswer: ")
    gold_chains = []
    for item in MC_ITEMS:
        prompt = render_texts(mc, item, [])[0][0]
        gold_chains.append(tok.encode(prompt + item["choices"][item["gold"]])[-12:])
    model = model_preferring(tok, gold_chains)
    result = evaluate_task(model, tok, mc, dist, max_len=24, share_prefix=False)  # 2-shot prompts are longer: cropped on the left
    assert result["accuracy"] == 1.0 and result["items"] == 4 and result["centered"] == 1.0

    relabelled = [{**item, "gold": (item["gold"] + 1) % 3} for item in MC_ITEMS]
    (tmp_path / "relabelled").mkdir()
    wrong = task("multiple_choice", tmp_path / "relabelled", relabelled, shots=2, delimiter="\nAnswer: ")
    result = evaluate_task(model, tok, wrong, dist, max_len=24, share_prefix=False)
    assert result["accuracy"] == 0.0 and result["centered"] == pytest.approx(-1 / 3)


def test_schema_scores_the_shared_continuation_under_each_context(tok, dist, tmp_path):
    item = {"context_options": ["The trophy did not fit in the suitcase because the trophy",
                                "The trophy did not fit in the suitcase because the suitcase"],
            "continuation": "was too big.", "gold": 0}
    schema = task("schema", tmp_path, [item], baseline=0.5)
    rendered = render_item(schema, item, [], tok, max_len=512)
    # the scored span is the continuation: the common suffix of both sequences
    for seq, start in zip(rendered.sequences, rendered.starts):
        assert tok.decode(seq[start:]).strip() == "was too big."
    assert score_item(model_preferring(tok, [rendered.sequences[0]]), schema, rendered, dist.device, share_prefix=False) is True
    assert score_item(model_preferring(tok, [rendered.sequences[1]]), schema, rendered, dist.device, share_prefix=False) is False


def test_language_modeling_needs_an_exact_greedy_match(tok, dist, tmp_path):
    item = {"context": "Roses are red, violets are", "continuation": "blue"}
    lm = task("language_modeling", tmp_path, [item], baseline=0.0)
    rendered = render_item(lm, item, [], tok, max_len=512)
    seq, start = rendered.sequences[0], rendered.starts[0]
    assert tok.decode(seq[start:]).strip() == "blue"
    assert score_item(model_preferring(tok, [seq]), lm, rendered, dist.device, share_prefix=False) is True
    # knowing all but the last continuation token is not enough
    partial = model_preferring(tok, [seq])
    partial.table[tuple(seq[-1 - partial.order:-1])] = {(seq[-1] + 1) % tok.vocab_size}
    assert score_item(partial, lm, rendered, dist.device, share_prefix=False) is False


def test_cropping_keeps_the_end_and_the_scored_span(tok, tmp_path):
    mc = task("multiple_choice", tmp_path, MC_ITEMS, shots=3)
    examples = MC_ITEMS[1:]
    full = render_item(mc, MC_ITEMS[0], examples, tok, max_len=10_000)
    cropped = render_item(mc, MC_ITEMS[0], examples, tok, max_len=16)
    cut = max(len(s) for s in full.sequences) - 16
    assert max(len(s) for s in cropped.sequences) == 16
    for f, c, fs, cs in zip(full.sequences, cropped.sequences, full.starts, cropped.starts):
        assert c == f[cut:]  # the same cut for every choice keeps their shared beginning aligned
        assert c[cs:] == f[fs:]


def test_shared_prefix_scoring_matches_scoring_each_candidate_in_full(trained_tiny_run, shared_data, dist):
    """The KV-cache path (shared few-shot prefix computed once) gives the same logits and decisions as running
    every candidate through the model, on real 10-shot items cropped to the model's context."""
    from nanoforge.eval.core import MIN_SHARED_PREFIX, candidate_predictions, load_items
    from nanoforge.model.load import load_model, load_tokenizer

    model, cfg, _ = load_model(trained_tiny_run, "base")
    run_tok = load_tokenizer(trained_tiny_run)
    present, _ = load_bundle(shared_data / "eval_bundle")
    cached_items = 0
    for t in [t for t in present if t.label in ("arc_easy", "piqa", "winogrande", "commonsense_qa")]:
        items = load_items(t)
        for i in range(6):
            examples = [items[j] for j in fewshot_indices(len(items), i, t.num_fewshot, 1234, t.label)]
            r = render_item(t, items[i], examples, run_tok, cfg.model.sequence_len)
            common = 0
            while all(len(s) > common and s[common] == r.sequences[0][common] for s in r.sequences):
                common += 1
            cached_items += min(common, min(r.starts) - 1) >= MIN_SHARED_PREFIX
            fast = candidate_predictions(model, r, dist.device, share_prefix=True)
            slow = candidate_predictions(model, r, dist.device, share_prefix=False)
            for (lf, tf), (ls, ts) in zip(fast, slow):
                assert torch.equal(tf, ts)
                torch.testing.assert_close(lf, ls, atol=2e-4, rtol=1e-4)
            assert score_item(model, t, r, dist.device, True) == score_item(model, t, r, dist.device, False)
    assert cached_items > 10


def test_bundle_reports_present_and_missing_tasks(shared_data):
    present, missing = load_bundle(shared_data / "eval_bundle")
    assert len(present) + len(missing) == 22
    assert {t.label for t in present} >= {"arc_easy", "copa", "winograd", "jeopardy"}
    assert "hellaswag" in missing
    by_label = {t.label: t for t in present}
    assert by_label["arc_easy"].random_baseline == 0.25 and by_label["arc_easy"].num_fewshot == 10
    assert by_label["winograd"].kind == "schema" and by_label["jeopardy"].delimiter == "\nAnswer: "


def test_core_over_the_real_bundle_with_a_model_that_knows_the_answers(tok, dist, shared_data):
    """One task of each kind from the real bundle; the model is built to know each gold continuation of the
    selected items, so every task scores 1 and CORE is exactly 1 (and flagged as not comparable)."""
    bundle = shared_data / "eval_bundle"
    present, _ = load_bundle(bundle)
    chosen = [t for t in present if t.label in ("copa", "winograd", "bigbench_operators")]
    model = NgramModel(tok.vocab_size, order=8)  # long keys: few-shot examples share short n-grams
    from nanoforge.eval.core import load_items, selected_indices

    for t in chosen:
        items = load_items(t)
        for i in selected_indices(len(items), 3, 1234):
            examples = [items[j] for j in fewshot_indices(len(items), i, t.num_fewshot, 1234, t.label)]
            r = render_item(t, items[i], examples, tok, 64)
            gold = r.sequences[r.gold] if t.kind != "language_modeling" else r.sequences[0]
            start = r.starts[r.gold] if t.kind != "language_modeling" else r.starts[0]
            model.prefer(gold[start - model.order:])
    result = evaluate_core(model, tok, bundle, dist, 64, max_items=3,
                           tasks=["copa", "winograd", "bigbench_operators"], show_progress=False, share_prefix=False)
    assert result["present"] == ["copa", "winograd", "bigbench_operators"]
    assert {name: r["accuracy"] for name, r in result["tasks"].items()} == {
        "copa": 1.0, "winograd": 1.0, "bigbench_operators": 1.0}
    assert result["core"] == 1.0
    assert result["comparable_with_full_core"] is False and "not comparable" in result["note"]


def test_core_end_to_end_on_a_trained_model(trained_tiny_run, shared_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_tiny_run, run)
    bundle = shared_data / "eval_bundle"
    proc = nanoforge("eval", "--run-dir", str(run), "--eval-bundle", str(bundle), "--max-items", "4")
    result = json.loads((run / "eval" / "base.json").read_text())
    core = result["core"]
    assert len(core["present"]) == 14 and len(core["missing"]) == 8
    assert "not comparable" in core["note"] and "not comparable" in proc.stdout
    for label, task_result in core["tasks"].items():
        assert task_result["items"] == 4, label
        assert 0.0 <= task_result["accuracy"] <= 1.0
    assert core["core"] == pytest.approx(sum(t["centered"] for t in core["tasks"].values()) / 14)
    assert 0.5 < result["val_bpb"] < 8.0
    assert json.loads((run / "eval" / "DONE").read_text())["stages"] == ["base"]
    again = nanoforge("eval", "--run-dir", str(run), "--eval-bundle", str(bundle))
    assert "already done" in again.stdout

    # the same items through two ranks give the same counts (each rank takes items r::2, sums all-reduced)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "nanoforge", "eval", "--run-dir", str(run), "--eval-bundle", str(bundle),
                          "--max-items", "4", "--tasks", "copa", "winograd", "jeopardy", "--force"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    distributed = json.loads((run / "eval" / "base.json").read_text())
    assert distributed["world_size"] == 2
    for label in ("copa", "winograd", "jeopardy"):
        assert distributed["core"]["tasks"][label]["items"] == 4
        assert distributed["core"]["tasks"][label]["accuracy"] == core["tasks"][label]["accuracy"]


def test_eval_rejects_bad_input_with_one_line(trained_tiny_run, shared_data, tmp_path):
    proc = nanoforge("eval", "--run-dir", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = nanoforge("eval", "--run-dir", str(trained_tiny_run), "--stage", "sft", check=False)
    assert proc.returncode == 2 and "nanoforge sft" in proc.stderr
    proc = nanoforge("eval", "--run-dir", str(trained_tiny_run), "--eval-bundle", str(tmp_path), check=False)
    assert proc.returncode == 2 and "core.yaml" in proc.stderr
    proc = nanoforge("eval", "--run-dir", str(trained_tiny_run), "--max-items", "0", check=False)
    assert proc.returncode == 2
    proc = nanoforge("eval", "--run-dir", str(trained_tiny_run), "--eval-bundle",
                     str(shared_data / "eval_bundle"), "--tasks", "no_such_task", check=False)
    assert proc.returncode == 2 and "no_such_task" in proc.stderr
    assert not (trained_tiny_run / "eval").exists()


def test_damaged_bundle_items_are_named_with_file_and_line(tmp_path):
    from nanoforge.errors import UserError
    from nanoforge.eval.core import load_items

    good = {"query": "Q?", "choices": ["a", "b"], "gold": 1}
    for bad, message in [({"query": "Q?", "choices": ["a", "b"]}, "needs 'gold'"),
                         ({**good, "gold": 2}, "'gold' is not the index"),
                         ("{not json", "not valid JSON")]:
        path = tmp_path / "t.jsonl"
        path.write_text(json.dumps(good) + "\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
        with pytest.raises(UserError, match=rf"t.jsonl:2: .*{message}"):
            load_items(CoreTask("t", "multiple_choice", path, 0, " ", 0.5))
