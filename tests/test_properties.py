"""Property-based tests (hypothesis): invariants of the multiset arithmetic, the reward, the
metrics and the box transforms, on random multisets, action sequences and boxes."""
import collections

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glimpse import multiset
from glimpse.data.images import letterbox, letterbox_geometry
from glimpse.metrics import MultisetMetrics

settings.register_profile("glimpse", max_examples=25, deadline=None)
settings.load_profile("glimpse")

NUM_CLASSES = 4
label_lists = st.lists(st.integers(0, NUM_CLASSES - 1), max_size=6)


def counts(labels: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=NUM_CLASSES)


@given(st.lists(label_lists, min_size=1, max_size=5))
def test_counts_from_labels_is_a_bincount(lists):
    width = max(len(x) for x in lists)
    padded = torch.tensor([x + [-1] * (width - len(x)) for x in lists], dtype=torch.long).reshape(len(lists), width)
    got = multiset.counts_from_labels(padded, NUM_CLASSES)
    assert torch.equal(got, torch.stack([counts(x) for x in lists]))


@given(label_lists, label_lists)
def test_intersection_matches_collections_counter(a, b):
    expected = sum((collections.Counter(a) & collections.Counter(b)).values())
    got = multiset.intersection_size(counts(a)[None], counts(b)[None])
    assert got.item() == expected
    assert got.item() == multiset.intersection_size(counts(b)[None], counts(a)[None]).item()  # symmetric
    assert got.item() <= min(len(a), len(b))


@given(label_lists, st.lists(st.integers(0, NUM_CLASSES), min_size=1, max_size=8))
def test_reward_sum_is_correct_minus_wrong_steps(targets, actions):
    """Labels only (no early STOP cost): each step is +1 (correct) or -1 (wrong), STOP +1 iff nothing remains."""
    result = multiset.rollout(counts(targets)[None], torch.tensor([actions]), stop_ends=True)
    alive, correct = result["alive"][0], result["correct"][0]
    reward = result["reward"][0]
    labels = torch.tensor(actions) < NUM_CLASSES
    label_steps = alive & labels
    n_correct = (correct & label_steps).sum().item()
    n_wrong = (~correct & label_steps).sum().item()
    assert reward[label_steps].sum().item() == n_correct - n_wrong
    # the emitted multiset is the labels before the first STOP; remaining never goes negative
    first_stop = next((i for i, a in enumerate(actions) if a == NUM_CLASSES), len(actions))
    assert torch.equal(result["predicted"][0], counts(actions[:first_stop]))
    assert (result["remaining_before"] >= 0).all()
    # correct label steps are exactly the intersection of emitted and target multisets
    assert n_correct == multiset.intersection_size(result["predicted"], counts(targets)[None]).item()


@given(st.lists(st.tuples(label_lists, label_lists), min_size=1, max_size=6))
def test_metrics_bounds_and_exact_match(pairs):
    metric = MultisetMetrics()
    predicted = torch.stack([counts(p) for p, _ in pairs])
    target = torch.stack([counts(t) for _, t in pairs])
    metric.update(predicted, target)
    values = {k.split("/")[-1]: v.item() for k, v in metric.compute().items()}
    for key in ("precision", "recall", "f1", "exact_match"):
        assert 0.0 <= values[key] <= 1.0
    all_exact = values["exact_match"] == 1.0
    assert all_exact == (values["precision"] == 1.0 and values["recall"] == 1.0)
    if all_exact:
        assert values["f1"] == 1.0


image_sizes = st.tuples(st.integers(8, 64), st.integers(8, 64))


@given(image_sizes, image_sizes, st.data())
def test_letterbox_boxes_stay_inside_and_keep_order(src, size, data):
    height, width = src
    x1 = data.draw(st.floats(0, width - 1))
    y1 = data.draw(st.floats(0, height - 1))
    x2 = data.draw(st.floats(x1, width))
    y2 = data.draw(st.floats(y1, height))
    boxes = torch.tensor([[x1, y1, x2, y2]])
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    out, moved = letterbox(image, boxes, size)
    assert tuple(out.shape) == (3, *size)
    new_w, new_h, left, top = letterbox_geometry(width, height, size)
    tol = 1e-3
    assert left - tol <= moved[0, 0] <= moved[0, 2] <= left + new_w + tol
    assert top - tol <= moved[0, 1] <= moved[0, 3] <= top + new_h + tol
    # the transform is the affine map of the pixels: scale by the rounded sizes, shift by the padding
    expected = torch.tensor([x1 * new_w / width + left, y1 * new_h / height + top,
                             x2 * new_w / width + left, y2 * new_h / height + top])
    assert torch.allclose(moved[0].double(), expected.double(), atol=1e-3)
