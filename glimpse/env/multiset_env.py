"""The multiset glimpse task as a gymnasium environment, single and natively batched.

An episode is one image. Each step the agent glimpses at a location (a cell of a grid, or a
continuous position) and takes a decision: keep looking, emit a class, or STOP. Emitting and
stopping are rewarded by :func:`glimpse.multiset.step`, the same function the REINFORCE
objective uses; looking is free. STOP terminates; running out of the step budget truncates.

Both envs step through :class:`EpisodeBatch` (B episodes as batched tensors), so the single
env is the batched one with B = 1 and the two cannot disagree.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from glimpse import multiset
from glimpse.geometry import even_cell_centres

LOCATIONS = ("discrete", "continuous")
OBSERVE = ("image", "glimpses")


@dataclass(frozen=True)
class TaskSpec:
    """What an env needs to know about its data and its rules; it declares the spaces.

    Decisions: ``0..K-1`` emit that class, ``K`` STOP (the policy's and multiset.py's index),
    ``K + 1`` LOOK (keep looking).
    """

    image_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]
    max_objects: int  # boxes per item (padded)
    max_steps: int  # step budget of an episode (glimpses and decisions)
    location: str  # "discrete": a cell of `grid`; "continuous": (x, y) in [0, 1] of width, height
    grid: tuple[int, int]  # (rows, cols) of the discrete locations
    glimpse_size: int  # side of the square glimpse patch, in pixels
    observe: str  # "image": the whole image; "glimpses": only the pixels glimpsed so far
    reward: multiset.RewardSpec
    image_bounds: tuple[float, float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stop(self) -> int:
        return self.num_classes

    @property
    def look(self) -> int:
        return self.num_classes + 1

    @property
    def fill(self) -> float:
        """Pixel value of what is not seen (outside the image, or not glimpsed yet)."""
        low, high = self.image_bounds
        return min(max(0.0, low), high)

    def observation_space(self) -> spaces.Dict:
        c, h, w = self.image_shape
        low, high = self.image_bounds
        p = self.glimpse_size
        return spaces.Dict({
            "image": spaces.Box(low, high, (c, h, w), np.float32),
            "glimpse": spaces.Box(low, high, (c, p, p), np.float32),
            "step": spaces.Discrete(self.max_steps + 1),
            "emitted": spaces.MultiDiscrete(np.full(self.num_classes, self.max_steps + 1), dtype=np.int64),
        })

    def action_space(self) -> spaces.Dict:
        if self.location == "discrete":
            location = spaces.Discrete(self.grid[0] * self.grid[1])
        else:
            location = spaces.Box(0.0, 1.0, (2,), np.float32)
        return spaces.Dict({"location": location, "decision": spaces.Discrete(self.num_classes + 2)})

    def decision_help(self) -> str:
        k = self.num_classes
        return f"0..{k - 1} emit that class, {k} STOP, {k + 1} LOOK"


def make_task(
    dataset,
    max_steps: int | None = None,
    location: str = "discrete",
    grid: Sequence[int] = (13, 13),
    glimpse_size: int | None = None,
    observe: str = "image",
    reward: multiset.RewardSpec | dict | None = None,
    image_bounds: Sequence[float] = (0.0, 1.0),
    class_names: Sequence[str] | None = None,
) -> TaskSpec:
    """Check the arguments and read shapes and classes from the dataset's first item."""
    if dataset is None:
        raise ValueError("glimpse/Multiset-v0 needs dataset=...: any dataset whose items are dicts with "
                         "'image' (C, H, W) and 'counts' (K,) (e.g. glimpse.data.MultisetMNIST); "
                         "glimpse/MultisetMNIST-v0 builds the default data itself")
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise ValueError(f"dataset must be a non-empty indexable dataset, got {type(dataset).__name__}")
    if location not in LOCATIONS:
        raise ValueError(f"location={location!r} is not known; choose one of {list(LOCATIONS)}")
    if observe not in OBSERVE:
        raise ValueError(f"observe={observe!r} is not known; choose one of {list(OBSERVE)}")
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid={list(grid)} must be two positive ints (rows, cols)")
    low, high = (float(b) for b in image_bounds)
    if not low < high:
        raise ValueError(f"image_bounds={list(image_bounds)} must be (low, high) with low < high")
    item = read_item(dataset, 0)
    image_shape = tuple(item["image"].shape)
    num_classes = item["counts"].shape[0]
    names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    names = tuple(str(n) for n in names) if names is not None else tuple(str(c) for c in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for items with {num_classes} counts; give one name per class")
    max_objects = item["labels"].shape[0]
    if max_steps is None:  # the default model: one glimpse and one decision per object, then STOP
        max_steps = 2 * (max_objects + 1)
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1 (steps per episode, glimpses and decisions)")
    h, w = image_shape[1:]
    if glimpse_size is None:
        glimpse_size = max(1, round(min(h, w) / 3))
    if not 1 <= glimpse_size <= min(h, w):
        raise ValueError(f"glimpse_size={glimpse_size} must be in 1..{min(h, w)} (pixels, inside a {h}x{w} image)")
    if isinstance(reward, dict):
        reward = multiset.RewardSpec(**reward)
    return TaskSpec(
        image_shape=image_shape, class_names=names, max_objects=max_objects, max_steps=int(max_steps),
        location=location, grid=grid, glimpse_size=int(glimpse_size), observe=observe,
        reward=reward or multiset.RewardSpec(), image_bounds=(low, high),
    )


def locations_at(centres: Tensor, task: TaskSpec) -> Tensor:
    """The env's location actions for pixel centres ``(..., 2)``: the cell holding each, or (x, y) in [0, 1]."""
    _, h, w = task.image_shape
    if task.location == "continuous":
        return (centres / torch.tensor([w, h], dtype=centres.dtype, device=centres.device)).clamp(0, 1)
    rows, cols = task.grid
    row = (centres[..., 1] * rows / h).floor().long().clamp(0, rows - 1)
    col = (centres[..., 0] * cols / w).floor().long().clamp(0, cols - 1)
    return row * cols + col


def read_batch(dataset, indices: Sequence[int], task) -> dict[str, Tensor]:
    """Dataset items as the env uses them, stacked: image, counts, labels, boxes.

    One batched fetch when the dataset has one (``get_batch``, as ``MultisetMNIST`` has, or the
    DataLoader's ``__getitems__``); otherwise item by item. Every item must have the shapes of
    the env's ``task`` (read from item 0), or a clear error names the item.
    """
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        batch = get_batch(list(indices))
        fields = ("image", "counts", "labels", "boxes")
        if set(fields) <= set(batch) and (tuple(batch["image"].shape[1:]), batch["counts"].shape[1], batch["boxes"].shape[1]) \
                == (task.image_shape, task.num_classes, task.max_objects):
            return {key: batch[key] for key in fields}
        items = [{key: batch[key][j] for key in batch} for j in range(len(indices))]  # find the item to name
    else:
        getitems = getattr(dataset, "__getitems__", None)
        items = getitems(list(indices)) if callable(getitems) else [dataset[i] for i in indices]
    items = [read_item(dataset, i, item) for i, item in zip(indices, items)]
    for i, item in zip(indices, items):
        image = item["image"]
        if tuple(image.shape) != task.image_shape or item["counts"].shape[0] != task.num_classes \
                or item["boxes"].shape[0] != task.max_objects:
            raise ValueError(
                f"dataset item {int(i)} has image {tuple(image.shape)}, {item['counts'].shape[0]} counts and "
                f"{item['boxes'].shape[0]} boxes; the env was built for {task.image_shape}, {task.num_classes} and "
                f"{task.max_objects} (item 0): all items must share these shapes (pad boxes and labels)"
            )
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "counts", "labels", "boxes")}


def read_item(dataset, index: int, item: Any = None) -> dict[str, Tensor]:
    """One dataset item as the env uses it: image, counts, labels and boxes (empty if absent)."""
    item = dataset[index] if item is None else item
    if not isinstance(item, dict) or "image" not in item or "counts" not in item:
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"dataset item {index} must be a dict with 'image' (C, H, W) and 'counts' (K,) "
                         f"[and 'labels', 'boxes'], got {keys}")
    image = torch.as_tensor(item["image"], dtype=torch.float32)
    counts = torch.as_tensor(item["counts"], dtype=torch.long)
    if image.ndim != 3 or counts.ndim != 1:
        raise ValueError(f"dataset item {index}: image must be (C, H, W) and counts (K,), "
                         f"got {tuple(image.shape)} and {tuple(counts.shape)}")
    labels = torch.as_tensor(item.get("labels", torch.zeros(0)), dtype=torch.long)
    boxes = torch.as_tensor(item.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
    return {"image": image, "counts": counts, "labels": labels, "boxes": boxes}


class EpisodeBatch:
    """B episodes as batched tensors, and the one implementation of reset and step.

    The envs hand out copies (``_numpy``), so the state can be updated in place.
    """

    def __init__(self, task: TaskSpec, dataset, batch: int, device: str | torch.device = "cpu") -> None:
        self.task, self.dataset, self.batch = task, dataset, batch
        self.device = torch.device(device)
        c, h, w = task.image_shape
        p, k, n = task.glimpse_size, task.num_classes, task.max_objects
        zeros = dict(dtype=torch.long, device=self.device)
        self.index = torch.zeros(batch, **zeros)
        self.padded = torch.full((batch, c, h + 2 * p, w + 2 * p), task.fill, device=self.device)  # image, margin p
        self.targets = torch.zeros(batch, k, **zeros)
        self.remaining = torch.zeros(batch, k, **zeros)
        self.emitted = torch.zeros(batch, k, **zeros)
        self.steps = torch.zeros(batch, **zeros)
        self.glimpse = torch.full((batch, c, p, p), task.fill, device=self.device)
        self.centre = torch.zeros(batch, 2, device=self.device)  # (x, y) pixels of the last glimpse
        self.correct = torch.zeros(batch, dtype=torch.bool, device=self.device)
        self.seen = torch.zeros(batch, 1, h, w, dtype=torch.bool, device=self.device)
        self.boxes = torch.zeros(batch, n, 4, device=self.device)
        self.box_labels = torch.full((batch, n), -1, **zeros)
        self._offsets = torch.arange(p, device=self.device)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)

    @property
    def image(self) -> Tensor:
        """The images ``(B, C, H, W)`` (a view of the padded store)."""
        p = self.task.glimpse_size
        return self.padded[:, :, p:-p, p:-p]

    # -- reset ------------------------------------------------------------------------------------
    def load(self, rows: Tensor, indices: Sequence[int]) -> None:
        """Start new episodes in ``rows`` on the dataset items ``indices``."""
        batch = read_batch(self.dataset, [int(i) for i in indices], self.task)
        task = self.task
        low, high = task.image_bounds
        p = task.glimpse_size
        rows = rows.to(self.device)
        images = batch["image"]
        lowest, highest = images.flatten(1).aminmax(dim=1)  # one pass over all new images
        outside = ((lowest < low) | (highest > high)).nonzero()
        if len(outside):
            j = int(outside[0])
            raise ValueError(f"the image of item {int(indices[j])} spans {lowest[j]:.3g}..{highest[j]:.3g}, outside "
                             f"image_bounds=({low}, {high}); pass image_bounds that hold the data's pixels")
        self.padded[rows, :, p:-p, p:-p] = images.to(self.device)  # the margins keep the fill value
        counts = batch["counts"].to(self.device, torch.long)
        self.index[rows] = torch.as_tensor([int(i) for i in indices], device=self.device)
        self.targets[rows] = counts
        self.remaining[rows] = counts
        self.boxes[rows] = batch["boxes"].to(self.device, torch.float32)
        self.box_labels[rows] = batch["labels"].to(self.device, torch.long)
        for state in (self.emitted, self.steps, self.centre, self.correct, self.seen):
            state[rows] = 0
        self.glimpse[rows] = task.fill

    # -- step -------------------------------------------------------------------------------------
    def parse_actions(self, action: Any) -> tuple[Tensor, Tensor]:
        """Batched ``location`` and ``decision`` tensors from an action dict, or a clear error."""
        task = self.task
        if not isinstance(action, dict) or set(action) != {"location", "decision"}:
            got = sorted(action) if isinstance(action, dict) else type(action).__name__
            raise ValueError(f"an action is a dict with 'location' and 'decision' (see env.action_space), got {got}")
        shape = (self.batch, 2) if task.location == "continuous" else (self.batch,)
        parsed = {}
        for key, want in (("location", shape), ("decision", (self.batch,))):
            value = torch.as_tensor(np.asarray(action[key]) if not isinstance(action[key], Tensor) else action[key])
            if value.numel() != math.prod(want):
                raise ValueError(f"action[{key!r}] has shape {tuple(value.shape)}; expected {want} "
                                 f"(batch {self.batch}) as in env.action_space")
            parsed[key] = value.reshape(want).to(self.device)
        location, decision = parsed["location"], parsed["decision"]
        space = task.action_space  # named in the errors only
        if decision.is_floating_point() or decision.dtype == torch.bool or not bool(((decision >= 0) & (decision <= task.look)).all()):
            raise ValueError(f"action['decision']={decision.tolist()} is outside {space()['decision']}: "
                             f"integers {task.decision_help()}")
        if task.location == "discrete":
            cells = task.grid[0] * task.grid[1]
            if location.is_floating_point() or location.dtype == torch.bool or not bool(((location >= 0) & (location < cells)).all()):
                raise ValueError(f"action['location']={location.tolist()} is outside {space()['location']}: "
                                 f"an integer cell 0..{cells - 1} of the {task.grid[0]}x{task.grid[1]} grid, row-major")
        else:
            location = location.float()
            if not bool(((location >= 0) & (location <= 1)).all()):
                raise ValueError(f"action['location']={location.tolist()} is outside {space()['location']}: "
                                 f"(x, y) as fractions of the image width and height, each in [0, 1]")
        return location, decision.long()

    def centres(self, location: Tensor) -> Tensor:
        """Pixel centres ``(B, 2)`` as (x, y) of discrete cells or continuous positions."""
        _, h, w = self.task.image_shape
        if self.task.location == "continuous":
            return location * torch.tensor([w, h], dtype=torch.float32, device=self.device)
        return even_cell_centres(location, self.task.grid, (h, w))

    def step(self, location: Tensor, decision: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Glimpse at ``location`` and apply ``decision`` in every row: (reward, terminated, truncated)."""
        task = self.task
        p = task.glimpse_size
        self.centre = self.centres(location)
        x0, y0 = (self.centre - p / 2).round().long().unbind(-1)  # top-left corner of the patch
        rows = (y0 + p)[:, None] + self._offsets  # (B, p) rows of the padded image
        cols = (x0 + p)[:, None] + self._offsets
        b = torch.arange(self.batch, device=self.device)[:, None, None]
        self.glimpse = self.padded[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, p, p)
        if task.observe == "glimpses":
            in_y = (self._rows >= y0[:, None]) & (self._rows < y0[:, None] + p)  # (B, H)
            in_x = (self._cols >= x0[:, None]) & (self._cols < x0[:, None] + p)  # (B, W)
            self.seen = self.seen | (in_y[:, None, :, None] & in_x[:, None, None, :])

        decides = decision <= task.stop  # a label or STOP; LOOK only glimpses
        reward, after, correct = multiset.step(self.remaining, decision.clamp(max=task.stop), task.reward)
        self.remaining = torch.where(decides[:, None], after, self.remaining)
        self.emitted = self.emitted + torch.nn.functional.one_hot(decision, task.look + 1)[:, : task.num_classes]
        self.correct = correct & decides
        self.steps = self.steps + 1
        terminated = decision == task.stop
        truncated = ~terminated & (self.steps >= task.max_steps)
        return torch.where(decides, reward, torch.zeros_like(reward)), terminated, truncated

    # -- what the agent and the analyst see -------------------------------------------------------
    def observation(self) -> dict[str, Tensor]:
        image = self.image
        if self.task.observe == "glimpses":
            image = torch.where(self.seen, image, torch.full_like(image, self.task.fill))
        return {"image": image, "glimpse": self.glimpse, "step": self.steps, "emitted": self.emitted}

    def info(self) -> dict[str, Tensor]:
        """The remaining multiset and the boxes, for analysis; ``correct``: the last decision was right."""
        return {
            "remaining": self.remaining, "counts": self.targets, "boxes": self.boxes, "box_labels": self.box_labels,
            "index": self.index, "glimpse_centre": self.centre, "correct": self.correct,
        }


def _numpy(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Numpy copies: what an env returns never changes when its state does."""
    return {key: value.detach().cpu().numpy().copy() for key, value in tensors.items()}


class MultisetEnv(gymnasium.Env):
    """One image per episode: glimpse, emit labels, STOP; rewarded by the multiset reward.

    Observation: ``image`` (or, with ``observe="glimpses"``, only the pixels glimpsed so far),
    ``glimpse`` (the current patch), ``step`` (steps taken) and ``emitted`` (labels emitted so
    far, as counts). Action: ``location`` (a cell of ``grid``, or continuous (x, y) in [0, 1])
    and ``decision`` (see :class:`TaskSpec`). ``info`` carries the remaining multiset, the
    target counts and the boxes. ``reset(options={"index": i})`` picks dataset item ``i``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, dataset=None, render_mode: str | None = None, **task_kwargs) -> None:
        self.task = make_task(dataset, **task_kwargs)
        self.dataset = dataset
        self.observation_space = self.task.observation_space()
        self.action_space = self.task.action_space()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; use 'rgb_array' or None")
        self.render_mode = render_mode
        self.episodes = EpisodeBatch(self.task, dataset, 1)
        self._done = True
        self._history: list[tuple[float, float, int, bool]] = []  # (x, y, decision, correct), for render

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = _option_index(options, len(self.dataset))
        if index is None:
            index = int(self.np_random.integers(len(self.dataset)))
        self.episodes.load(torch.zeros(1, dtype=torch.long), [index])
        self._done = False
        self._history = []
        return self._observation(), self._info()

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        location, decision = self.episodes.parse_actions(_batch_of_one(action))
        reward, terminated, truncated = self.episodes.step(location, decision)
        x, y = self.episodes.centre[0].tolist()
        self._history.append((x, y, int(decision), bool(self.episodes.correct[0])))
        self._done = bool(terminated | truncated)
        return self._observation(), float(reward), bool(terminated), bool(truncated), self._info()

    def _observation(self) -> dict[str, Any]:
        obs = _numpy({k: v[0] for k, v in self.episodes.observation().items()})
        obs["step"] = np.int64(obs["step"])
        return obs

    def _info(self) -> dict[str, Any]:
        info = _numpy({k: v[0] for k, v in self.episodes.info().items()})
        info["index"], info["correct"] = int(info["index"]), bool(info["correct"])
        return info

    def render(self) -> np.ndarray | None:
        """RGB array ``(H', W', 3)`` uint8: the canvas, every glimpse and every emitted label."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without render_mode; make the env with render_mode='rgb_array'")
            return None
        from glimpse.env.render import draw_episode

        return draw_episode(self.episodes.image[0], self.task, self._history, self.episodes.emitted[0])


class MultisetVectorEnv(VectorEnv):
    """``num_envs`` episodes of :class:`MultisetEnv`, stepped together as torch tensors.

    Same seeds and actions give the same observations, rewards and infos as
    ``gymnasium.vector.SyncVectorEnv`` over :class:`MultisetEnv` (next-step autoreset): env
    ``i`` draws its images from its own generator seeded ``seed + i``.
    ``reset(options={"indices": [...]})`` picks the dataset items (one per env).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, dataset=None, device: str | torch.device = "cpu", **task_kwargs) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1")
        self.task = make_task(dataset, **task_kwargs)
        self.dataset = dataset
        self.num_envs = num_envs
        self.single_observation_space = self.task.observation_space()
        self.single_action_space = self.task.action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.episodes = EpisodeBatch(self.task, dataset, num_envs, device)
        self._generators = [np.random.default_rng() for _ in range(num_envs)]
        self._autoreset = torch.zeros(num_envs, dtype=torch.bool)
        self._started = False

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        super().reset(seed=seed if isinstance(seed, int) else None)
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        if seeds is not None:
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for num_envs={self.num_envs}; give one per env, or an int")
            self._generators = [
                gymnasium.utils.seeding.np_random(s)[0] if s is not None else g for s, g in zip(seeds, self._generators)
            ]
        indices = (options or {}).get("indices")
        if indices is not None:
            indices = [_option_index({"index": i}, len(self.dataset)) for i in indices]
            if len(indices) != self.num_envs:
                raise ValueError(f"options['indices'] has {len(indices)} items for num_envs={self.num_envs}")
        else:
            indices = [int(g.integers(len(self.dataset))) for g in self._generators]
        self.episodes.load(torch.arange(self.num_envs), indices)
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool)
        self._started = True
        return self._observation(), self._info()

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        location, decision = self.episodes.parse_actions(actions)
        reward, terminated, truncated = self.episodes.step(location, decision)
        restart = self._autoreset.to(self.episodes.device)
        if bool(restart.any()):  # next-step autoreset: these envs start a new episode instead
            rows = restart.nonzero().squeeze(1)
            self.episodes.load(rows, [int(self._generators[i].integers(len(self.dataset))) for i in rows.tolist()])
            reward, terminated, truncated = (torch.where(restart, torch.zeros_like(t), t) for t in (reward, terminated, truncated))
        self._autoreset = (terminated | truncated).cpu()
        return (self._observation(), reward.double().cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(),
                self._info())

    def _observation(self) -> dict[str, np.ndarray]:
        return _numpy(self.episodes.observation())

    def _info(self) -> dict[str, np.ndarray]:
        info = _numpy(self.episodes.info())
        every = np.ones(self.num_envs, dtype=np.bool_)
        return {**info, **{f"_{key}": every for key in info}}


def _batch_of_one(action: Any) -> Any:
    if isinstance(action, dict):
        return {key: np.asarray(value)[None] for key, value in action.items()}
    return action


def _option_index(options: dict | None, size: int) -> int | None:
    index = (options or {}).get("index")
    if index is None:
        return None
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or not 0 <= index < size:
        raise ValueError(f"options index={index!r} must be an int in 0..{size - 1} (an item of the dataset)")
    return int(index)


def _default_dataset(data: dict | None, kwargs: dict):
    if "dataset" in kwargs:
        raise ValueError("glimpse/MultisetMNIST-v0 builds its own data (set it with data={...}); "
                         "to pass a dataset use glimpse/Multiset-v0")
    from glimpse.data import MultisetMNIST

    return MultisetMNIST(**{"split": "train", **(data or {})})


def multiset_mnist_env(data: dict | None = None, **kwargs) -> MultisetEnv:
    """``glimpse/MultisetMNIST-v0``: the env on Multiset-MNIST; ``data`` = MultisetMNIST arguments."""
    return MultisetEnv(_default_dataset(data, kwargs), **kwargs)


def multiset_mnist_vector_env(num_envs: int = 1, data: dict | None = None, **kwargs) -> MultisetVectorEnv:
    """The batched ``glimpse/MultisetMNIST-v0`` (what ``gymnasium.make_vec`` builds)."""
    return MultisetVectorEnv(num_envs, _default_dataset(data, kwargs), **kwargs)
