"""Structured attention graphs (SAG): the several minimal patch sets that each suffice for a decision.

Shitole, Li, Kahng, Tadepalli, Fern, "One Explanation is Not Enough: Structured Attention
Graphs for Image Classification", NeurIPS 2021 (docs/references.md). A heatmap shows one
explanation; a classifier often has several small sets of image regions that each keep it
confident, and a SAG shows them and how the confidence falls as patches are taken away.

- Patches: a ``grid x grid`` split of the image (7 x 7 for 224 px). A **composite** shows the
  original in the revealed patches and a baseline elsewhere (black, or the blurred image that
  insertion starts from); the patch mask is bilinearly upsampled, so patch edges are soft.
- A patch set is **sufficient** when the class probability of its composite exceeds
  ``sufficient`` (0.9) times the probability on the full image.
- **Beam search** from the empty set: each state is extended by each of the ``num_ranked``
  (q = 15) best-ranked patches it lacks, the ranking from a quick attribution map averaged over
  each patch; a sufficient successor is pruned greedily to a **minimal** set (no single patch
  can be removed and stay sufficient) and becomes a root unless already found; the
  ``beam_width`` (3) most confident others form the next beam. Stop at ``max_roots`` (10)
  roots, when no state is left, or (``max_size``, as the authors' ``max_patches``) when the
  states have that many patches. A sufficient successor that contains a root already found is
  not pruned again (pruning would mostly return that root).
- **Diverse subset**: the largest set of roots whose pairwise overlap is at most
  ``max_overlap`` (1) patch (an exact maximum clique, networkx), cut to ``num_diverse`` (3).
- **Graph**: the diverse roots are nodes; a child is its parent minus one patch, kept and
  expanded while its probability stays above ``expand`` (0.4) times the full image's (at most
  ``max_nodes`` nodes, the most confident children first, so the drawing stays readable).

Every search is written for one decision as a generator that yields the patch sets it needs
scored; :func:`run_searches` runs the searches of all decisions in lockstep, so every
successor of a beam step, every pruning round and every child of a graph level (of all
decisions at once) goes through the model in one batched forward pass, chunked to bound memory.
For the glimpse model the decision of meta step ``t`` is the label it emitted, scored on the
composite with the step's recorded glimpse actions replayed, as deletion and insertion score it
(:func:`~glimpse.heatmaps.replay.replay`, :func:`~glimpse.heatmaps.targets.label_probability`);
a patch set asked for by several labels of one image is one composite, replayed once for all.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.geometry import upsample_cells
from glimpse.heatmaps.gradients import METHODS, attribute
from glimpse.heatmaps.replay import attribute_targets, replay
from glimpse.heatmaps.scores import blur
from glimpse.heatmaps.targets import emitted_targets, label_probability
from glimpse.models.inference import inference_copy

Score = Callable[[Tensor, Tensor, Tensor], Tensor]  # (composites (u, C, H, W), rows (n,), which (n,)) -> probability (n,)
PatchSet = frozenset  # flat patch indices, row-major in the grid
Search = Generator[list, Tensor, object]  # yields patch sets to score, is sent their probabilities
BASELINES = ("black", "blurred")


@dataclass(frozen=True)
class SAGSettings:
    """The method's parameters (the paper's values by default); each is a ``sag.*`` config key."""

    grid: int = 7  # patches per side (7 x 7 for 224 px)
    beam_width: int = 3  # states kept per beam step
    num_ranked: int = 15  # q: each state is extended by its q best-ranked missing patches
    max_roots: int = 10  # stop the search at this many minimal sufficient sets
    max_size: int | None = None  # stop it when the states have this many patches (None: all patches)
    sufficient: float = 0.9  # sufficient: probability > sufficient * the full image's
    expand: float = 0.4  # graph: a child is kept while its probability > expand * the full image's
    max_overlap: int = 1  # diverse subset: roots pairwise sharing at most this many patches
    num_diverse: int = 3  # diverse roots drawn as the graph's top layer
    max_nodes: int = 40  # graph nodes at most (the most confident children first)
    baseline: str = "black"  # what hidden patches show: black | blurred
    blur_sigma: float = 5.0  # of the blurred baseline, pixels
    ranking: str = "integrated_gradients"  # attribution method ranking the patches (glimpse.heatmaps.gradients)
    ig_steps: int = 8  # Integrated Gradients steps of the ranking
    chunk: int = 256  # composites per forward pass at most

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ValueError:
            return ValueError(f"sag.{key}={getattr(self, key)!r} is not allowed; {allowed}")

        for key in ("grid", "beam_width", "num_ranked", "max_roots", "num_diverse", "max_nodes", "ig_steps", "chunk"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise bad(key, "give an integer >= 1")
        if isinstance(self.max_overlap, bool) or int(self.max_overlap) != self.max_overlap or self.max_overlap < 0:
            raise bad("max_overlap", "give an integer >= 0")
        if self.max_size is not None and (isinstance(self.max_size, bool) or int(self.max_size) != self.max_size
                                          or self.max_size < 1):
            raise bad("max_size", "give an integer >= 1, or null for no limit")
        for key in ("sufficient", "expand"):
            if not 0 < getattr(self, key) <= 1:
                raise bad(key, "give a fraction of the full image's probability in (0, 1]")
        if self.expand > self.sufficient:
            raise bad("expand", f"it must be at most sag.sufficient={self.sufficient} (roots are sufficient)")
        if self.baseline not in BASELINES:
            raise bad("baseline", f"choose from {list(BASELINES)}")
        if self.blur_sigma <= 0:
            raise bad("blur_sigma", "give a width > 0 in pixels")
        if self.ranking not in METHODS:
            raise bad("ranking", f"choose an attribution method from {list(METHODS)}")

    @classmethod
    def from_config(cls, config: Mapping | None, ignore: Sequence[str] = ("num_images",)) -> SAGSettings:
        """Settings from a ``sag`` config section; an unknown key is a ValueError naming it."""
        given = {k: v for k, v in dict(config or {}).items() if k not in ignore}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"sag has unknown keys {unknown}; choose from {known + list(ignore)}")
        return cls(**given)


@dataclass
class SAG:
    """The structured attention graph of one decision (one image, one target class).

    ``roots``: every minimal sufficient patch set found, in the order found, with
    ``root_probabilities``; ``diverse``: indices into ``roots`` of the graph's top layer;
    ``graph``: a networkx DiGraph whose nodes are patch sets (frozensets of flat patch indices)
    with ``probability`` and ``root`` (index into ``roots`` or None), and whose edges
    parent -> child carry the ``removed`` patch and the probability ``drop``.
    """

    image: Tensor  # (C, H, W) the explained image
    baseline: Tensor  # (C, H, W) what hidden patches show
    target: int  # the explained class
    probability: float  # the class probability on the full image
    grid: int
    ranking: list[int]  # patches, best-ranked first
    roots: list[PatchSet]
    root_probabilities: list[float]
    diverse: list[int]
    graph: nx.DiGraph
    source: int = 0  # row of the image in the batch it came from
    step: int | None = None  # the glimpse model's meta step, when explaining one


# ---- composites -------------------------------------------------------------------------------


def composite(images: Tensor, baselines: Tensor, masks: Tensor) -> Tensor:
    """Images ``(n, C, H, W)`` shown where the patch ``masks (n, g, g)`` are 1 and ``baselines``
    elsewhere, the mask bilinearly upsampled (soft patch edges; an all-ones mask gives the image)."""
    soft = F.interpolate(masks[:, None].to(images.dtype), size=tuple(images.shape[-2:]), mode="bilinear",
                         align_corners=False)
    soft = torch.where(soft > 1 - 1e-6, torch.ones_like(soft), soft.clamp(min=0))  # the interpolation's float rounding
    return torch.lerp(baselines, images, soft)


def patch_masks(sets: Sequence[PatchSet], grid: int, device: torch.device | str = "cpu") -> Tensor:
    """Patch masks ``(n, grid, grid)`` of patch sets."""
    rows = [i for i, s in enumerate(sets) for _ in s]
    cols = [p for s in sets for p in sorted(s)]
    masks = torch.zeros(len(sets), grid * grid, device=device)
    masks[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)] = 1.0
    return masks.view(len(sets), grid, grid)


def patch_ranking(maps: Tensor, grid: int) -> Tensor:
    """Patches ``(N, grid * grid)`` best first: the attribution ``maps (N, H, W)`` averaged over
    each patch, ties by patch index."""
    scores = F.adaptive_avg_pool2d(maps[:, None].float(), grid).flatten(1)
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


# ---- the search of one decision, as a generator ---------------------------------------------------


def prune(sets: list[PatchSet], probabilities: list[float], threshold: float) -> Search:
    """Greedy pruning of sufficient ``sets`` to minimal ones: each round scores every single-patch
    removal of every set still shrinking (one batch) and drops the patch whose removal keeps the
    highest probability above ``threshold`` (ties: the lowest patch index). Returns
    ``[(minimal set, probability)]``; the last round shows no patch of a set can go."""
    current, kept = list(sets), list(probabilities)
    active = [i for i, s in enumerate(current) if s]
    while active:
        asked = [(i, p) for i in active for p in sorted(current[i])]
        got = yield [current[i] - {p} for i, p in asked]
        best: dict[int, tuple[float, int]] = {}
        for (i, p), value in zip(asked, got.tolist()):
            if value > threshold and (i not in best or value > best[i][0]):
                best[i] = (value, p)
        for i, (value, p) in best.items():
            current[i], kept[i] = current[i] - {p}, value
        active = [i for i in best if current[i]]
    return list(zip(current, kept))


def beam_search(ranking: Sequence[int], full: float, s: SAGSettings) -> Search:
    """Minimal sufficient patch sets ``[(set, probability)]`` of one decision, in the order found."""
    threshold = s.sufficient * full
    (empty,) = (yield [frozenset()]).tolist()
    if empty > threshold:  # the baseline alone keeps the decision: the empty set is the one root
        return [(frozenset(), empty)]
    roots: dict[PatchSet, float] = {}
    beam: list[PatchSet] = [frozenset()]
    while beam and len(roots) < s.max_roots and (s.max_size is None or len(beam[0]) < s.max_size):
        successors: dict[PatchSet, None] = {}
        for state in beam:
            lacking = [p for p in ranking if p not in state][: s.num_ranked]
            successors.update((state | {p}, None) for p in lacking)
        if not successors:
            break
        sets = list(successors)
        probabilities = (yield sets).tolist()
        ranked = sorted(range(len(sets)), key=lambda i: -probabilities[i])  # stable: ties in ranking order
        # a sufficient successor containing a root already found is no seed of a new explanation
        found = [i for i in ranked if probabilities[i] > threshold and not any(root <= sets[i] for root in roots)]
        if found:
            pruned = yield from prune([sets[i] for i in found], [probabilities[i] for i in found], threshold)
            for root, value in pruned:
                if root not in roots and len(roots) < s.max_roots:
                    roots[root] = value
        beam = [sets[i] for i in ranked if probabilities[i] <= threshold][: s.beam_width]
    return list(roots.items())


def diverse_subset(roots: Sequence[PatchSet], max_overlap: int = 1, limit: int | None = None) -> list[int]:
    """Indices of the largest set of ``roots`` pairwise sharing at most ``max_overlap`` patches
    (an exact maximum clique of the compatibility graph; among equally large ones, the one of the
    earliest roots), in root order, cut to ``limit``."""
    n = len(roots)
    if n == 0:
        return []
    compatible = nx.Graph()
    big = n * n + 1  # one more root outweighs any preference among the roots
    compatible.add_nodes_from((i, {"weight": big + n - i}) for i in range(n))
    compatible.add_edges_from((i, j) for i in range(n) for j in range(i + 1, n) if len(roots[i] & roots[j]) <= max_overlap)
    clique, _ = nx.max_weight_clique(compatible, weight="weight")
    return sorted(clique)[:limit]


def _order(sets) -> list[PatchSet]:
    return sorted(sets, key=lambda x: (len(x), sorted(x)))


def expand_graph(roots: Sequence[tuple[PatchSet, float]], full: float, s: SAGSettings) -> Search:
    """The graph below ``roots [(set, probability)]``: children (parent minus one patch) kept while
    their probability > ``expand * full``, level by level (all nodes of the largest unexpanded
    size at once, so a child reached from several parents is scored once and gets every edge)."""
    graph = nx.DiGraph()
    for i, (root, value) in enumerate(roots):
        graph.add_node(root, probability=value, root=i)
    expanded: set[PatchSet] = set()
    while True:
        pending = [node for node in graph if node not in expanded and node]
        if not pending:
            return graph
        size = max(len(node) for node in pending)
        parents = _order(node for node in pending if len(node) == size)
        expanded.update(parents)
        children: dict[PatchSet, list[tuple[PatchSet, int]]] = {}
        for parent in parents:
            for p in sorted(parent):
                children.setdefault(parent - {p}, []).append((parent, p))
        new = [child for child in children if child not in graph]
        values = dict(zip(new, (yield new).tolist())) if new else {}
        room = s.max_nodes - graph.number_of_nodes()
        kept = [c for c in sorted(new, key=lambda c: -values[c]) if values[c] > s.expand * full][: max(room, 0)]
        for child in kept:
            graph.add_node(child, probability=values[child], root=None)
        for child, links in children.items():
            if child in graph:
                for parent, p in links:
                    drop = graph.nodes[parent]["probability"] - graph.nodes[child]["probability"]
                    graph.add_edge(parent, child, removed=p, drop=drop)


def decision_search(ranking: Sequence[int], full: float, s: SAGSettings) -> Search:
    """Beam search, diverse subset and graph of one decision: ``(roots, diverse, graph)``."""
    roots = yield from beam_search(ranking, full, s)
    diverse = diverse_subset([r for r, _ in roots], s.max_overlap, s.num_diverse)
    graph = yield from expand_graph([roots[i] for i in diverse], full, s)
    return roots, diverse, graph


# ---- scoring all searches in lockstep ---------------------------------------------------------------


def run_searches(searches: list[Search], score_sets: Callable[[list[PatchSet], Tensor], Tensor]) -> list:
    """Run the ``searches`` together: each round, the patch sets all of them ask for (each search's
    sets scored before answered from its cache) are scored by one ``score_sets(sets, rows)`` call
    (``rows``: which search asked), and each search gets its probabilities. Returns each search's
    result."""
    results: list = [None] * len(searches)
    asking: dict[int, list[PatchSet]] = {}
    cache: dict[tuple[int, PatchSet], float] = {}

    def advance(i: int, value: list[float] | None) -> None:
        try:
            asking[i] = searches[i].send(None if value is None else torch.tensor(value, dtype=torch.float64))
        except StopIteration as stop:
            results[i] = stop.value
            asking.pop(i, None)

    for i in range(len(searches)):
        advance(i, None)
    while asking:
        order = list(asking)
        todo = list(dict.fromkeys((i, x) for i in order for x in asking[i] if (i, x) not in cache))
        if todo:
            rows = torch.tensor([i for i, _ in todo], dtype=torch.long)
            cache.update(zip(todo, score_sets([x for _, x in todo], rows).tolist()))
        for i in order:
            advance(i, [cache[i, x] for x in asking[i]])
    return results


def search_graphs(images: Tensor, targets: Tensor, score: Score, maps: Tensor, settings: SAGSettings,
                  sources: Tensor | None = None, lockstep: bool = True) -> list[SAG]:
    """The SAGs of decisions ``images (N, C, H, W)`` x ``targets (N,)``, given the model's
    ``score(composites (u, ...), rows (n,), which (n,))`` (the probability of decision
    ``rows[i]``'s target on composite ``which[i]``) and the ranking attribution ``maps (N, H, W)``.

    Decisions with the same ``sources`` entry (default: all different) explain the same image, so a
    patch set asked for by several of them is one composite, scored once for all of them (the
    glimpse model's emitted labels of one image: one replay gives every step's label). Composites
    go through ``score`` in chunks of ``settings.chunk``. ``lockstep=False`` runs one decision at a
    time (with ``settings.chunk=1``: one composite per forward pass, the unbatched reference).
    """
    s = settings
    baselines = blur(images, s.blur_sigma) if s.baseline == "blurred" else torch.zeros_like(images)
    ranking = patch_ranking(maps, s.grid).tolist()
    every = torch.arange(len(images), device=images.device)
    sources = every.tolist() if sources is None else torch.as_tensor(sources).tolist()
    with torch.no_grad():
        full = torch.cat([score(images[k : k + s.chunk], every[k : k + s.chunk], every[: len(every[k : k + s.chunk])])
                          for k in range(0, len(images), s.chunk)]).tolist()

    def score_sets(sets: list[PatchSet], rows: Tensor) -> Tensor:
        """Probabilities ``(n,)`` of ``sets`` for decisions ``rows``, each distinct composite once."""
        composites: dict[tuple[int, PatchSet], int] = {}
        first: list[int] = []  # a decision row showing each distinct composite's image
        which = []
        for k, (row, x) in enumerate(zip(rows.tolist(), sets)):
            key = (sources[row], x)
            if key not in composites:
                composites[key] = len(first)
                first.append(k)
            which.append(composites[key])
        which_t = torch.tensor(which, dtype=torch.long, device=images.device)
        rows = rows.to(images.device)
        out = torch.empty(len(sets), dtype=torch.float64)
        for start in range(0, len(first), s.chunk):
            part = first[start : start + s.chunk]
            asked = ((which_t >= start) & (which_t < start + len(part))).nonzero()[:, 0]
            shown = rows[part]
            masks = patch_masks([sets[k] for k in part], s.grid, images.device)
            with torch.no_grad():
                x = composite(images[shown], baselines[shown], masks)
                out[asked.cpu()] = score(x, rows[asked], which_t[asked] - start).double().cpu()
        return out

    searches = [decision_search(ranking[i], full[i], s) for i in range(len(images))]
    if lockstep:
        results = run_searches(searches, score_sets)
    else:  # one decision at a time, rows still naming the decision
        results = [run_searches([search], lambda sets, rows, i=i: score_sets(sets, torch.full_like(rows, i)))[0]
                   for i, search in enumerate(searches)]
    out = []
    for i, (roots, diverse, graph) in enumerate(results):
        out.append(SAG(image=images[i].detach().cpu(), baseline=baselines[i].detach().cpu(), target=int(targets[i]),
                       probability=full[i], grid=s.grid, ranking=ranking[i], roots=[r for r, _ in roots],
                       root_probabilities=[v for _, v in roots], diverse=diverse, graph=graph))
    return out


# ---- the two entry points ------------------------------------------------------------------------


def structured_attention_graphs(model: nn.Module, images: Tensor, targets: Tensor, settings: SAGSettings | None = None,
                                layer: str | None = None, lockstep: bool = True) -> list[SAG]:
    """SAGs of any classifier ``model (n, C, H, W) -> logits (n, K)`` for the pairs of
    ``images (B, C, H, W)`` and target classes ``targets (B,)``; probabilities are the softmax
    of the logits. ``layer``: for a CAM ranking (``settings.ranking``). The model is run in eval
    mode, its train/eval state restored."""
    s = settings or SAGSettings()
    targets = torch.as_tensor(targets, device=images.device).long().view(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets: give one class per image")
    maps = attribute(model, images, targets[:, None], [s.ranking], layer=layer, ig_steps=s.ig_steps)[s.ranking][:, 0]
    was_training = model.training
    model.eval()

    def score(x: Tensor, rows: Tensor, which: Tensor) -> Tensor:
        return model(x).softmax(-1)[which, targets[rows]]

    try:
        return search_graphs(images, targets, score, maps, s, lockstep=lockstep)
    finally:
        model.train(was_training)


def glimpse_attention_graphs(model: nn.Module, images: Tensor, settings: SAGSettings | None = None, episode=None,
                             targets: Tensor | None = None, lockstep: bool = True) -> list[SAG]:
    """SAGs of the glimpse model's decisions on ``images (B, C, H, W)``: by default every label
    the greedy episode emitted (rows (image, step, class) of
    :func:`~glimpse.heatmaps.targets.emitted_targets`), each scored as the probability of
    that label at its step with the step's recorded glimpse actions replayed on the composite.
    The ranking attribution explains the same replayed label logit. ``model``: a GlimpseModule."""
    s = settings or SAGSettings()
    fast = inference_copy(model)  # batch norm folded: the same function, faster replays
    if episode is None:
        with torch.no_grad():
            episode = fast.predict_episode(images)
    if targets is None:
        targets = emitted_targets(episode, fast.policy.num_classes)
    if not len(targets):
        return []
    maps = attribute_targets(fast, images, [s.ranking], episode, targets, ig_steps=s.ig_steps)[s.ranking]
    hw = tuple(images.shape[-2:])
    if tuple(maps.shape[-2:]) != hw:  # a CAM at the backbone's cells
        maps = upsample_cells(maps, hw, episode.cell_stride)
    policy, actions = fast.policy, episode.actions()

    def score(x: Tensor, rows: Tensor, which: Tensor) -> Tensor:
        """The label of each row's step on composite ``which``: one replay (to the last step asked
        for) of each composite with its image's recorded actions gives every step's label logits."""
        source = torch.empty(len(x), dtype=torch.long, device=x.device)
        source[which] = targets[rows, 0]
        logits = replay(policy, actions, x, source, int(targets[rows, 1].max()) + 1)  # (u, steps, K + 1)
        return label_probability(logits[which, targets[rows, 1]], targets[rows])

    sags = search_graphs(images[targets[:, 0]], targets[:, 2], score, maps, s, sources=targets[:, 0], lockstep=lockstep)
    for sag, (image, step, _) in zip(sags, targets.tolist()):
        sag.source, sag.step = image, step
    return sags


def summary(sags: Sequence[SAG], seconds: float) -> dict[str, float]:
    """``sag/num_roots`` (minimal sufficient sets per decision, before the diverse cut),
    ``sag/root_size`` (patches per root), ``sag/sufficient_fraction`` (decisions with a root) and
    ``sag/seconds_per_decision`` of SAGs computed in ``seconds``."""
    n = max(len(sags), 1)
    sizes = [len(r) for sag in sags for r in sag.roots]
    return {
        "sag/num_roots": sum(len(sag.roots) for sag in sags) / n,
        "sag/root_size": sum(sizes) / len(sizes) if sizes else float("nan"),
        "sag/sufficient_fraction": sum(bool(sag.roots) for sag in sags) / n,
        "sag/seconds_per_decision": seconds / n,
    }


def timed(fn: Callable[..., list[SAG]], *args, **kwargs) -> tuple[list[SAG], float]:
    """``fn(*args, **kwargs)`` and its wall-clock seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
