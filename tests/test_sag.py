"""Structured attention graphs (glimpse/heatmaps/sag.py) on hand-built classifiers, and end to end."""
import itertools
import json

import networkx as nx
import pytest
import torch
from torch import nn

from glimpse.heatmaps.sag import SAGSettings, composite, diverse_subset, patch_masks, structured_attention_graphs
from glimpse.heatmaps.sag_render import check_num_images

PATCH = 5  # odd: the centre pixel of a patch shows exactly the patch's mask value (bilinear upsampling)


class RuleClassifier(nn.Module):
    """Two classes; class 0 is confident when every patch of some rule is revealed.

    It reads the centre pixel of each patch of an all-ones image (1 where the patch is shown, 0
    on the black baseline); a rule's evidence is the product of its patches' centre values, and
    class 0's logit is ``10 * max(evidence) - 5`` against class 1's 0: probability 0.993 with a
    whole rule shown, 0.007 without one.
    """

    def __init__(self, rules, grid: int) -> None:
        super().__init__()
        self.rules = [list(r) for r in rules]
        self.grid = grid
        self.calls: list[int] = []  # batch size of every forward pass

    def forward(self, x):
        self.calls.append(x.shape[0])
        centre = torch.arange(self.grid) * PATCH + PATCH // 2
        values = x[:, 0][:, centre][:, :, centre].flatten(1)  # (n, P)
        evidence = torch.stack([values[:, rule].prod(-1) for rule in self.rules], -1).amax(-1)
        return torch.stack([10 * evidence - 5, torch.zeros_like(evidence)], -1)


def run(rules, grid=7, **settings):
    model = RuleClassifier(rules, grid)
    images = torch.ones(1, 1, grid * PATCH, grid * PATCH)
    s = SAGSettings(grid=grid, ranking="gradient", **settings)
    (sag,) = structured_attention_graphs(model, images, torch.tensor([0]), s)
    return sag, model, s


def probability(model, sag, patches):
    masks = patch_masks([frozenset(patches)], sag.grid)
    with torch.no_grad():
        return float(model(composite(sag.image[None], sag.baseline[None], masks)).softmax(-1)[0, 0])


def test_composite_soft_edges_and_full_mask():
    image = torch.rand(1, 3, 35, 35)
    black = torch.zeros_like(image)
    assert torch.equal(composite(image, black, torch.ones(1, 7, 7)), image)
    one = composite(torch.ones(1, 1, 35, 35), torch.zeros(1, 1, 35, 35), patch_masks([frozenset({24})], 7))[0, 0]
    assert one[17, 17] == 1  # the centre of patch (3, 3)
    assert 0 < one[17, 20] < 1 and 0 < one[17, 14] < 1  # soft towards the neighbours
    assert one[0, 0] == 0 and one[17, 22] == 0  # the next patch's centre is hidden


def test_two_disjoint_pairs_give_exactly_those_two_minimal_roots():
    pair_a, pair_b = frozenset({8, 9}), frozenset({30, 38})
    sag, model, s = run([pair_a, pair_b])
    assert set(sag.roots) == {pair_a, pair_b} and len(sag.roots) == 2
    threshold = s.sufficient * sag.probability
    for root, p in zip(sag.roots, sag.root_probabilities):
        assert p > threshold and probability(model, sag, root) == pytest.approx(p)
        for patch in root:  # minimal: no patch can go
            assert probability(model, sag, root - {patch}) <= threshold
    assert [sag.roots[i] for i in sag.diverse] == sag.roots  # disjoint: both kept
    # the graph: both roots on top, their one-patch children far below 40% are not nodes
    assert set(sag.graph.nodes) == {pair_a, pair_b}


def test_a_classifier_needing_every_patch_has_one_root_of_all_patches():
    sag, model, _ = run([range(16)], grid=4)
    assert sag.roots == [frozenset(range(16))]
    assert sag.diverse == [0]


def test_threshold_and_overlap_bound_and_maximum_diverse_subset():
    rules = [{0, 1}, {1, 2}, {2, 3}, {10, 11, 12}, {12, 20}, {30, 31}]
    sag, model, s = run(rules, max_overlap=0, num_diverse=10, expand=0.2)
    threshold = s.sufficient * sag.probability
    assert len(sag.roots) >= 3
    for root in sag.roots:
        assert any(set(rule) == set(root) for rule in rules)  # minimal sufficient sets of this model are its rules
        assert probability(model, sag, root) > threshold
    chosen = [sag.roots[i] for i in sag.diverse]
    assert all(len(a & b) <= 0 for a, b in itertools.combinations(chosen, 2))
    best = max(k for k in range(1, len(sag.roots) + 1) for subset in itertools.combinations(sag.roots, k)
               if all(len(a & b) == 0 for a, b in itertools.combinations(subset, 2)))
    assert len(chosen) == best
    for node, data in sag.graph.nodes(data=True):
        assert data["probability"] > s.expand * sag.probability
        assert data["probability"] == pytest.approx(probability(model, sag, node), abs=1e-6)
    for parent, child, data in sag.graph.edges(data=True):
        assert parent - child == {data["removed"]}
        assert data["drop"] == pytest.approx(sag.graph.nodes[parent]["probability"] - sag.graph.nodes[child]["probability"])


def test_diverse_subset_is_the_largest_compatible_set_cut_to_the_limit():
    roots = [frozenset(x) for x in ({0, 1, 2}, {2, 3, 4}, {0, 5}, {6, 7}, {1, 3, 5})]
    assert diverse_subset(roots, 1) == [0, 1, 2, 3, 4]  # every pair shares at most one patch
    # disjoint pairs: A-D, B-C, B-D, C-D, D-E; the one largest set is {B, C, D}
    assert diverse_subset(roots, 0) == [1, 2, 3]
    assert diverse_subset(roots, 0, limit=2) == [1, 2]
    # equally large sets: the earliest roots win
    assert diverse_subset([frozenset({0}), frozenset({0}), frozenset({1})], 0) == [0, 2]
    assert diverse_subset([], 1) == []


def test_graph_children_lose_one_patch_while_above_the_expand_fraction():
    # a graded model: the probability grows with the number of the 4 patches of a square shown
    class Graded(RuleClassifier):
        def forward(self, x):
            centre = torch.arange(self.grid) * PATCH + PATCH // 2
            values = x[:, 0][:, centre][:, :, centre].flatten(1)[:, [0, 1, 7, 8]].sum(-1)  # 0..4 patches
            return torch.stack([3 * values - 6, torch.zeros_like(values)], -1)

    model = Graded([], 7)
    (sag,) = structured_attention_graphs(model, torch.ones(1, 1, 35, 35), torch.tensor([0]), SAGSettings(grid=7, ranking="gradient"))
    p = lambda k: torch.sigmoid(torch.tensor(3.0 * k - 6)).item()  # noqa: E731
    square = {0, 1, 7, 8}
    # 3 of the 4 patches: 0.953 > 0.9 * 0.998; 2 of them: 0.5, not sufficient, but above 0.4 * 0.998.
    # The four patches rank equal, ties by index: the beam of width 3 keeps the pairs with patch 0,
    # so the triples found are those with patch 0 (the search is a beam, not exhaustive)
    assert sorted(map(sorted, sag.roots)) == [[0, 1, 7], [0, 1, 8], [0, 7, 8]]
    assert len(sag.diverse) == 1  # any two triples of the square share 2 patches
    root = sag.roots[sag.diverse[0]]
    assert sag.graph.nodes[root]["probability"] == pytest.approx(p(3), abs=1e-5)
    assert set(sag.graph.nodes) == {root} | {root - {x} for x in root}  # one patch fewer: 0.5 > 0.4; two fewer: 0.05
    for _, child, data in sag.graph.out_edges(root, data=True):
        assert child == root - {data["removed"]} and data["drop"] == pytest.approx(p(3) - p(2), abs=1e-5)


def test_same_inputs_give_the_same_graph_and_batching_changes_nothing_but_the_passes():
    rules = [{0, 1}, {1, 2}, {12, 20}, {30, 31, 32}]
    first, model_a, s = run(rules)
    again, _, _ = run(rules)
    one_by_one, model_b, _ = run(rules, chunk=1)
    for other in (again, one_by_one):
        assert other.roots == first.roots and other.diverse == first.diverse
        assert nx.utils.graphs_equal(other.graph, first.graph)
        assert sorted(other.graph.edges(data=True), key=str) == sorted(first.graph.edges(data=True), key=str)
    assert max(model_b.calls) == 1 and sum(model_b.calls) == sum(model_a.calls)  # the same composites...
    assert len(model_a.calls) * 10 < len(model_b.calls)  # ...in far fewer forward passes


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"sag\.grid=0"):
        SAGSettings(grid=0)
    with pytest.raises(ValueError, match=r"sag\.baseline='grey'.*black"):
        SAGSettings(baseline="grey")
    with pytest.raises(ValueError, match=r"sag\.num_images=-1 must be an integer >= 0"):
        check_num_images(-1)
    with pytest.raises(ValueError, match=r"sag has unknown keys \['beam'\]"):
        SAGSettings.from_config({"beam": 3, "num_images": 2})


def test_glimpse_decisions_are_scored_with_the_recorded_actions_replayed(smoke_run):
    """On a trained checkpoint: each SAG explains one emitted label, its full-image probability is
    the recorded episode's, and each root's is that label's at its step on the composite with the
    episode's actions replayed."""
    from glimpse.heatmaps.replay import target_probability
    from glimpse.heatmaps.targets import emitted_targets, label_probability
    from glimpse.heatmaps.sag import glimpse_attention_graphs
    from glimpse.module import load_checkpoint

    out, _ = smoke_run
    model = load_checkpoint(str(out / "checkpoints" / "last.ckpt")).eval()
    images = torch.rand(2, 1, 100, 100) * (torch.rand(2, 1, 100, 100) > 0.8)
    with torch.no_grad():
        episode = model.predict_episode(images)
    targets = emitted_targets(episode, model.policy.num_classes)
    sags = glimpse_attention_graphs(model, images, SAGSettings(grid=5, max_size=3), episode=episode)
    assert [(s.source, s.step, s.target) for s in sags] == [tuple(t) for t in targets.tolist()]
    recorded = label_probability(episode.label_logits[targets[:, 0], targets[:, 1]], targets)
    assert torch.allclose(torch.tensor([s.probability for s in sags]), recorded, atol=1e-4)
    actions = episode.actions()
    for sag, target in zip(sags, targets):
        for root, p in zip(sag.roots, sag.root_probabilities):
            x = composite(sag.image[None], sag.baseline[None], patch_masks([root], 5))
            with torch.no_grad():
                again = target_probability(model, actions, target[None], x)
            assert float(again) == pytest.approx(p, abs=1e-4) and p > 0.9 * sag.probability


def test_evaluate_draws_sags_into_the_report(smoke_run, tmp_path):
    from conftest import run

    out, _ = smoke_run
    ckpt = out / "checkpoints" / "last.ckpt"
    run("evaluate.py", f"ckpt_path={ckpt}", "data.test_size=8", "data.num_workers=0", "heatmaps.methods=[saliency_map]",
        "sag.num_images=1", "sag.max_size=4", f"paths.output_dir={tmp_path}")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("sag/num_roots", "sag/root_size", "sag/sufficient_fraction", "sag/seconds_per_decision"):
        assert key in metrics
    assert 0 <= metrics["sag/sufficient_fraction"] <= 1 and metrics["sag/seconds_per_decision"] > 0
    pictures = sorted((tmp_path / "sag").glob("image_0_step_*.png"))
    assert pictures  # one per emitted label of image 0
    report = (tmp_path / "report.md").read_text()
    assert "## Structured attention graphs" in report
    assert all(f"(sag/{p.name})" in report for p in pictures)
    proc = run("evaluate.py", f"ckpt_path={ckpt}", "sag.baseline=grey", f"paths.output_dir={tmp_path / 'bad'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: sag.baseline='grey' is not allowed; choose from ['black', 'blurred']"


@pytest.mark.slow
def test_heatmap_callback_draws_sags_when_asked(tmp_path):
    """callbacks.heatmaps.sag={...}: one SAG picture per emitted label of the fixed images, also in W&B as `sag`."""
    from conftest import TINY, run

    base = [o for o in TINY if not o.startswith("callbacks.heatmaps")] + ["logger=wandb", "test=false",
                                                                         "callbacks.heatmap_metrics=null"]
    run("train.py", *base, "callbacks.heatmaps.num_images=1", "callbacks.heatmaps.methods=[gradcam]",
        "callbacks.heatmaps.sag={grid:4,max_size:2}", f"paths.output_dir={tmp_path}")
    pictures = sorted((tmp_path / "heatmaps").glob("epoch_*/sag/image_0_step_*.png"))  # drawn at the end of fit
    assert pictures and all(p.stat().st_size > 5_000 for p in pictures)
    assert len(list(tmp_path.glob("wandb/offline-run-*/files/media/images/sag_*.png"))) == len(pictures)
