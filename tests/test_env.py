"""The gymnasium environment: hand-played rewards, spaces, seeding, batched = single, a trained policy played."""
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import glimpse  # noqa: F401 -- registers the envs
from glimpse import multiset
from glimpse.data import MultisetMNIST
from glimpse.env import MultisetEnv, MultisetVectorEnv, play_policy
from glimpse.metrics import MultisetMetrics
from glimpse.module import GlimpseModule

K = 3  # classes of the hand-made data; decision K is STOP, K + 1 LOOK
STOP, LOOK = K, K + 1


def tiny_item(counts=(1, 0, 2), size=20):
    """A blank 20 x 20 image whose multiset is {0, 2, 2}, with one bright pixel at (row 14, col 15)."""
    image = torch.zeros(1, size, size)
    image[0, 14, 15] = 1.0
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    labels += [-1] * (4 - len(labels))
    return {"image": image, "counts": torch.tensor(counts), "labels": torch.tensor(labels),
            "boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 4)}


def hand_env(**kwargs):
    kwargs = {"grid": (2, 2), "glimpse_size": 4, "max_steps": 8, **kwargs}
    env = gymnasium.make("glimpse/Multiset-v0", dataset=[tiny_item()], **kwargs)
    env.reset(seed=0)
    return env


def play(env, decisions, location=0):
    """Step through decisions; returns the rewards and the last step's outputs."""
    rewards, out = [], None
    for d in decisions:
        out = env.step({"location": location, "decision": d})
        rewards.append(out[1])
    return rewards, out


@pytest.mark.parametrize(
    "decisions, rewards, remaining",
    [
        ([2], [1.0], [1, 0, 1]),  # right label: +1, one copy leaves the remaining multiset
        ([2, 2, 2], [1.0, 1.0, -1.0], [1, 0, 0]),  # repeated label: right twice (two copies), then wrong
        ([1], [-1.0], [1, 0, 2]),  # wrong label: -1, nothing leaves
        ([LOOK, LOOK], [0.0, 0.0], [1, 0, 2]),  # looking is free
    ],
)
def test_hand_played_labels(decisions, rewards, remaining):
    env = hand_env()
    got, (obs, _, terminated, truncated, info) = play(env, decisions)
    assert got == rewards
    assert info["remaining"].tolist() == remaining
    assert obs["emitted"].tolist() == np.bincount([d for d in decisions if d < K], minlength=K).tolist()
    assert obs["step"] == len(decisions) and not terminated and not truncated


def test_stop_too_early_costs_what_is_left_and_terminates():
    env = hand_env()
    rewards, (_, _, terminated, truncated, info) = play(env, [0, STOP])
    assert rewards == [1.0, -2.0]  # two 2s left unnamed, one each
    assert terminated and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"location": 0, "decision": LOOK})


def test_stop_at_the_right_time():
    env = hand_env()
    rewards, (_, _, terminated, _, info) = play(env, [2, LOOK, 0, 2, STOP])
    assert rewards == [1.0, 0.0, 1.0, 1.0, 1.0] and terminated
    assert info["remaining"].tolist() == [0, 0, 0] and info["correct"]


def test_budget_truncates_and_reward_spec_passes_through():
    env = hand_env(max_steps=3, reward={"wrong": -0.5, "early_stop_cost": 0.25})
    rewards, (_, _, terminated, truncated, _) = play(env, [1, LOOK, 0])
    assert rewards == [-0.5, 0.0, 1.0] and truncated and not terminated
    env.reset()
    assert play(env, [STOP])[0] == [-0.75]  # three objects left, 0.25 each


def test_reward_is_multiset_step_itself(monkeypatch):
    """The env calls glimpse.multiset.step (the objective's function), not a copy of it."""
    calls = []
    real = multiset.step

    def spy(remaining, actions, spec=multiset.RewardSpec()):
        calls.append(actions.tolist())
        reward, after, correct = real(remaining, actions, spec)
        return reward + 100, after, correct

    monkeypatch.setattr(multiset, "step", spy)
    env = hand_env()
    assert play(env, [2])[0] == [101.0] and calls == [[2]]


def test_glimpse_patch_and_revealed_pixels():
    env = hand_env(observe="glimpses")
    obs, _ = env.reset(seed=0)
    assert not obs["image"].any() and not obs["glimpse"].any()
    obs = env.step({"location": 3, "decision": LOOK})[0]  # cell (1, 1): centre (15, 15), patch rows/cols 13..16
    assert obs["glimpse"][0, 1, 2] == 1.0 and obs["glimpse"].sum() == 1.0
    assert obs["image"][0, 14, 15] == 1.0
    env = hand_env(location="continuous")
    obs = env.step({"location": np.array([0.0, 0.0], np.float32), "decision": LOOK})[0]  # centre (0, 0): half outside
    assert obs["glimpse"].shape == (1, 4, 4) and not obs["glimpse"].any()
    obs = env.step({"location": np.array([0.75, 0.7], np.float32), "decision": LOOK})[0]  # centre (15, 14)
    assert obs["glimpse"][0, 2, 2] == 1.0


@pytest.mark.parametrize(
    "action, message",
    [
        ({"location": 0, "decision": K + 2}, "decision"),
        ({"location": 0, "decision": -1}, "decision"),
        ({"location": 0, "decision": 1.5}, "decision"),
        ({"location": 4, "decision": 0}, "location"),
        ({"location": 0}, "'location' and 'decision'"),
        (3, "'location' and 'decision'"),
    ],
)
def test_bad_actions_are_clear_errors(action, message):
    env = hand_env()
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_bad_continuous_location_and_bad_data():
    env = hand_env(location="continuous")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        env.step({"location": np.array([1.5, 0.0], np.float32), "decision": 0})
    with pytest.raises(ValueError, match="dataset="):
        gymnasium.make("glimpse/Multiset-v0")
    with pytest.raises(ValueError, match="'counts'"):
        gymnasium.make("glimpse/Multiset-v0", dataset=[{"image": torch.zeros(1, 8, 8)}])
    with pytest.raises(ValueError, match="image_bounds"):
        gymnasium.make("glimpse/Multiset-v0", dataset=[tiny_item()], image_bounds=(0.0, 0.5)).reset(seed=0)
    with pytest.raises(ValueError, match="location="):
        gymnasium.make("glimpse/Multiset-v0", dataset=[tiny_item()], location="polar")
    with pytest.raises(ValueError, match="Multiset-v0"):
        gymnasium.make("glimpse/MultisetMNIST-v0", dataset=[tiny_item()])
    with pytest.raises(ValueError, match="index"):
        gymnasium.make("glimpse/Multiset-v0", dataset=[tiny_item()]).reset(options={"index": 1})


@pytest.fixture(scope="module")
def items():
    data = MultisetMNIST(split="val", size=24, seed=0)
    return [data[i] for i in range(len(data))]


@pytest.mark.parametrize("kwargs", [{}, {"location": "continuous", "observe": "glimpses", "glimpse_size": 20}])
def test_check_env_passes(items, kwargs):
    env = gymnasium.make("glimpse/Multiset-v0", dataset=items, render_mode="rgb_array", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports soft failures as warnings
        check_env(env.unwrapped, skip_render_check=False)


def test_default_env_and_render():
    env = gymnasium.make("glimpse/MultisetMNIST-v0", data={"size": 16}, render_mode="rgb_array")
    assert env.unwrapped.task.max_steps == 10 and env.unwrapped.task.num_classes == 10
    _, info = env.reset(seed=5)
    blank = env.render()
    play(env, [LOOK, int(np.argmax(info["counts"]))], location=84)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == blank.shape and frame.shape[2] == 3 and frame.shape[1] >= 300
    changed = (frame != blank).any(-1)
    assert changed[: frame.shape[1]].sum() > 100  # the two glimpse outlines and the label on the canvas
    assert changed[frame.shape[1]:].any()  # the emitted multiset below it


@pytest.mark.parametrize("kwargs, on_the_fly", [({}, False), ({"location": "continuous", "observe": "glimpses", "max_steps": 4}, False),
                                                ({}, True)])
def test_batched_env_equals_sync_vector_env_of_single_envs(items, kwargs, on_the_fly):
    n = 6
    if on_the_fly:  # canvases composed at each reset: the batched env fetches its new items together
        items = MultisetMNIST(split="val", size=24, seed=0)
        fetched = []
        items.get_batch = lambda indices: fetched.append(len(indices)) or MultisetMNIST.get_batch(items, indices)
    batched = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=n, dataset=items, **kwargs)
    sync = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=n, dataset=items, vectorization_mode="sync", **kwargs)
    assert isinstance(batched, MultisetVectorEnv) and isinstance(sync.envs[0].unwrapped, MultisetEnv)
    assert batched.observation_space == sync.observation_space and batched.action_space == sync.action_space

    def same(a, b):
        if isinstance(a, dict):
            assert set(a) == set(b)
            return all(same(a[key], b[key]) for key in a)
        if isinstance(a, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)

    assert same(batched.reset(seed=7), sync.reset(seed=7))
    batched.action_space.seed(1)
    ends = 0
    for _ in range(40):
        actions = batched.action_space.sample()
        got, want = batched.step(actions), sync.step(actions)
        assert same(got, want)
        ends += int(got[2].sum() + got[3].sum())
    assert ends > n  # autoresets happened along the way
    if on_the_fly:
        assert n in fetched  # one fetch for all the envs that start together


def test_import_glimpse_is_cheap_and_registers():
    code = "import sys, gymnasium, glimpse; assert 'glimpse/MultisetMNIST-v0' in gymnasium.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- a trained-or-fresh policy in the env ------------------------------------------------------------
def fresh_module(stop_bias: float) -> GlimpseModule:
    torch.manual_seed(0)
    policy = {"_target_": "glimpse.models.policy.GlimpsePolicy", "hidden": 32,
              "backbone": {"_target_": "glimpse.models.backbone.ConvBackbone"}}
    module = GlimpseModule(policy, {}, num_classes=10, class_names=[str(c) for c in range(10)], max_steps=5)
    with torch.no_grad():
        module.policy.controller.classifier[-1].bias[10] += stop_bias
    return module.eval()


@pytest.mark.parametrize("stop_bias", [0.0, 8.0, -30.0])  # as initialised, STOP at once, never STOP
def test_play_policy_returns_match_the_evaluation_metrics(stop_bias):
    data = MultisetMNIST(split="test", size=16, seed=0)
    module = fresh_module(stop_bias)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    with torch.no_grad():  # what evaluate.py computes: module._evaluate on the same images
        episode = module.predict_episode(batch["image"])
        predicted = module.predicted_counts(episode)
    expected = MultisetMetrics()
    expected.update(predicted, batch["counts"])
    expected = {k: float(v) for k, v in expected.compute().items()}
    rewards = multiset.rollout(batch["counts"], episode.labels)["reward"].sum(-1)

    envs = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=8, dataset=data)
    result = play_policy(module, envs, indices=list(range(len(data))))
    assert result["metrics"] == expected
    assert np.array_equal(result["emitted"], predicted.numpy()) and np.array_equal(result["counts"], batch["counts"].numpy())
    assert np.allclose(result["return"], rewards.numpy())
    # the return, from the multiset sizes: +1 right, -1 wrong, then STOP: +1 if nothing left, else -|left|
    inter = multiset.intersection_size(predicted, batch["counts"]).numpy()
    left = batch["counts"].sum(-1).numpy() - inter
    stop = np.where(result["terminated"], np.where(left == 0, 1, -left), 0)
    assert np.array_equal(result["return"], 2 * inter - predicted.sum(-1).numpy() + stop)
    if stop_bias > 0:
        assert result["terminated"].all() and (result["length"] == 2).all()
    if stop_bias < 0:
        assert result["truncated"].all() and (result["length"] == 10).all()

    single = play_policy(module, gymnasium.make("glimpse/Multiset-v0", dataset=data), indices=[3, 0])
    assert np.array_equal(single["return"], result["return"][[3, 0]])


def test_play_policy_checks_budget_and_classes():
    module = fresh_module(0.0)
    data = MultisetMNIST(split="test", size=4, seed=0)
    with pytest.raises(ValueError, match="max_steps=10"):
        play_policy(module, gymnasium.make("glimpse/Multiset-v0", dataset=data, max_steps=6))
    with pytest.raises(ValueError, match="classes"):
        play_policy(module, gymnasium.make("glimpse/Multiset-v0", dataset=data, class_names=list("abcdefghij")))
    with pytest.raises(TypeError, match="GlimpseModule"):
        play_policy(object(), gymnasium.make("glimpse/Multiset-v0", dataset=data))


@pytest.mark.slow
def test_play_policy_of_a_trained_checkpoint_matches_evaluate_py(tmp_path):
    """train.py experiment=smoke, then evaluate.py's metrics.json against the policy played in the env on the same test images."""
    import json
    import os
    from pathlib import Path

    from glimpse.module import load_checkpoint

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for script, *overrides in (
        ("train.py", "experiment=smoke", "logger=none", "test=false", "callbacks.heatmaps=null", f"paths.output_dir={tmp_path / 'train'}"),
        ("evaluate.py", f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}", "data.test_size=64",
         "data.num_workers=0", "heatmaps.methods=[saliency_map]", f"paths.output_dir={tmp_path / 'eval'}"),
    ):
        subprocess.run([sys.executable, str(root / script), *overrides], cwd=root, env=env, check=True,
                       capture_output=True, timeout=900)
    expected = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    module = load_checkpoint(str(tmp_path / "train" / "checkpoints" / "last.ckpt"))
    envs = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=32, dataset=MultisetMNIST(split="test", size=64, seed=0))
    result = play_policy(module, envs, indices=list(range(64)))
    for key, value in result["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-6), key


def test_a_batched_fetch_with_other_shapes_names_the_item():
    class Cropped(MultisetMNIST):
        def get_batch(self, indices):
            batch = super().get_batch(indices)
            return batch | {"image": batch["image"][..., :50]} if len(indices) > 1 else batch

    envs = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=3, dataset=Cropped(split="val", size=8))
    with pytest.raises(ValueError, match=r"dataset item \d has image \(1, 100, 50\).*built for \(1, 100, 100\)"):
        envs.reset(options={"indices": [2, 3, 4]})
