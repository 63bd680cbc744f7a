"""Training examples: ordering, task weights, the epoch stream, collation."""

from __future__ import annotations

import numpy as np
import pytest

from emola.config import load_config
from emola.train.examples import collate, example_order, length_grouped_order, training_stream, weighted_examples


def test_length_grouped_order_is_a_permutation_with_similar_lengths_per_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, 1000).tolist()
    order = length_grouped_order(lengths, batch=8, seed=1)
    assert sorted(order) == list(range(1000))
    spread = np.mean([np.ptp([lengths[i] for i in order[s:s + 8]]) for s in range(0, 1000, 8)])
    random_spread = np.mean([np.ptp(lengths[s:s + 8]) for s in range(0, 1000, 8)])
    assert spread < random_spread / 4
    assert order != length_grouped_order(lengths, batch=8, seed=2)


def test_ungrouped_order_is_a_seeded_shuffle_that_mixes_tasks():
    examples = [{"length": 50}] * 300 + [{"length": 250}] * 300  # the manifest's layout: emotion rows, then AU rows
    lengths = [e["length"] for e in examples]

    def unused(_example):
        raise AssertionError("no tokenizing when the order ignores lengths")

    order = example_order(examples, unused, batch=8, seed=1, group_by_length=False)
    assert sorted(order) == list(range(600)) and order == example_order(examples, unused, 8, 1, group_by_length=False)
    assert 20 <= sum(i >= 300 for i in order[:80]) <= 60  # both tasks from the start, not one after the other
    grouped = example_order(examples, lambda e: e["length"], 8, 1, group_by_length=True)
    assert grouped == length_grouped_order(lengths, 8, 1)


def test_the_stream_holds_every_epoch_each_in_a_fresh_order_and_tokenizes_each_example_once():
    examples = [{"uid": f"e{i}", "task": "emotion", "length": 50 + i} for i in range(100)]
    examples += [{"uid": f"a{i}", "task": "au", "length": 200 + i} for i in range(100)]
    calls = []

    def length(example):
        calls.append(example["uid"])
        return example["length"]

    stream, sizes = training_stream(examples, {"au": 1.5}, length, batch=8, seed=1, epochs=3, group_by_length=True)
    assert len(stream) == sum(sizes) and len(sizes) == 3
    epochs, start = [], 0
    for size in sizes:
        epochs.append([e["uid"] for e in stream[start:start + size]])
        start += size
    for number, epoch in enumerate(epochs):  # each epoch: that epoch's weighting, reordered
        assert sorted(epoch) == sorted(e["uid"] for e in weighted_examples(examples, {"au": 1.5}, seed=1 + number))
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order every epoch, not the same batches again
    assert sorted(calls) == sorted(e["uid"] for e in examples)  # lengths: once per distinct example
    first, _ = training_stream(examples, {"au": 1.5}, length, batch=8, seed=1, epochs=1, group_by_length=True)
    assert [e["uid"] for e in first] == epochs[0]  # reproducible, and a longer run starts the same way
    plain, sizes = training_stream(examples, {}, length, batch=8, seed=1, epochs=2, group_by_length=False)
    assert sizes == [200, 200] and plain[:200] != plain[200:]


def test_the_stream_has_the_epochs_max_steps_needs_and_no_more_than_train_epochs(repo_root):
    from emola.train.launcher import epochs_to_stream, optimizer_steps

    t = load_config(repo_root / "params.yaml", []).train  # 2 workers x micro batch 8
    assert optimizer_steps(1955, t) == 123 and optimizer_steps(9 * 1955, t) == 1100  # not 9 x 123
    assert epochs_to_stream(1955, t.model_copy(update={"max_steps": 1000})) == (9, 123)
    assert epochs_to_stream(1955, t.model_copy(update={"max_steps": 1107})) == (10, 123)  # 9 epochs: 1100 steps
    assert epochs_to_stream(1955, t.model_copy(update={"max_steps": 5000, "epochs": 3})) == (3, 123)
    assert epochs_to_stream(1955, t.model_copy(update={"max_steps": None, "epochs": 2})) == (2, 123)
    with pytest.raises(RuntimeError, match="no optimizer step"):
        epochs_to_stream(1, t)


def test_task_weights_repeat_each_tasks_examples():
    examples = [{"uid": f"e{i}", "task": "emotion"} for i in range(400)] + [{"uid": f"a{i}", "task": "au"} for i in range(400)]
    doubled = weighted_examples(examples, {"au": 2.0}, seed=1)
    counts = {e["uid"]: 0 for e in examples}
    for e in doubled:
        counts[e["uid"]] += 1
    assert {counts[f"e{i}"] for i in range(400)} == {1} and {counts[f"a{i}"] for i in range(400)} == {2}
    # A fraction rounds per example, reproducibly: about 1.5 copies each, never fewer than one.
    fractional = weighted_examples(examples, {"au": 1.5}, seed=1)
    au = [e["uid"] for e in fractional if e["task"] == "au"]
    assert 540 <= len(au) <= 660 and set(au) == {f"a{i}" for i in range(400)}
    assert fractional == weighted_examples(examples, {"au": 1.5}, seed=1)
    assert weighted_examples(examples, {}, seed=1) == examples


def test_collate_pads_right_and_masks_padding():
    ids = np.empty(2, dtype=object)
    ids[:] = [np.array([1, 2, 3]), np.array([4, 5])]
    labels = np.empty(2, dtype=object)
    labels[:] = [np.array([-100, 2, 3]), np.array([-100, 5])]
    batch = collate({"input_ids": ids, "labels": labels, "prior": np.zeros((2, 4), np.float32)}, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["prior"].shape == (2, 4)
