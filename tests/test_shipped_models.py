"""Smoke test of the shipped models (models/*.onnx) through the path `make demo` takes.

`make demo` runs `rcan demo`: run_demo -> resolve_models(DemoConfig) -> graph_specs -> sim_graph, whose
perception_node and policy_node specs carry `model_path` on top of config/{perception,policy}.yaml; the
nodes turn those into PerceptionNodeParams / PolicyNodeParams and load with CanonicalGenerator(...) and
load_planner(...).  This test follows the same chain for every shipped model, runs each once, and checks
the model card (<stem>.card.json names the files) and the contract against the ONNX graph's own inputs
and outputs, read here with onnxruntime directly.  A renamed model or a missing card fails it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rcan_bringup.demo import DemoConfig, camera_size, graph_specs, resolve_models
from rcan_bringup.graph import resolve, share_dir

MODELS_DIR = share_dir() / "models"
SHIPPED = sorted(p.name for p in MODELS_DIR.glob("*.onnx"))
GENERATORS = [n for n in SHIPPED if n.startswith("generator_")]
POLICIES = [n for n in SHIPPED if n.startswith("policy_")]


def _no_log(*_args) -> None:
    pass


def test_models_are_shipped_and_each_is_a_known_kind():
    assert GENERATORS and POLICIES, f"models/ holds {SHIPPED}"
    assert set(GENERATORS) | set(POLICIES) == set(SHIPPED), "a shipped ONNX file that is neither generator_ nor policy_"


def test_demo_defaults_resolve_to_shipped_models():
    """`rcan demo` with no options: both default models exist, so it never falls back to untrained ones."""
    cfg = DemoConfig(allow_untrained=False)
    generator, policy, untrained = resolve_models(cfg, log=_no_log)
    assert not untrained
    assert generator.parent == MODELS_DIR and generator.name in GENERATORS
    assert policy.parent == MODELS_DIR and policy.name in POLICIES
    specs = {s.name: s for s in graph_specs(cfg, generator, policy, camera_size(cfg, policy))}
    assert specs["perception_node"].parameters["model_path"] == str(generator)
    assert specs["policy_node"].parameters["model_path"] == str(policy)
    from rcan_grasp_policy.contract import PolicyContract, contract_path

    contract = PolicyContract.load(contract_path(policy))
    assert specs["sim_node"].parameters["image_size"] == contract.image_size  # renders as the policy was trained


@pytest.mark.parametrize("node, cls_path", [("perception_node", "rcan_perception.perception_node:PerceptionNodeParams"),
                                            ("policy_node", "rcan_grasp_policy.policy_node:PolicyNodeParams")])
def test_launch_defaults_name_shipped_models(node, cls_path):
    """The launch file's path: config/<node>.yaml's model_path and the node's own default both exist."""
    cls = _import(cls_path)
    from_yaml = _yaml_params(f"config/{node.removesuffix('_node')}.yaml", node)["model_path"]
    for path in (from_yaml, cls().model_path):
        assert resolve(path).is_file(), f"{node}: model_path {path} is not a shipped file"


def _import(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _yaml_params(rel: str, node: str) -> dict:
    data = yaml.safe_load(resolve(rel).read_text())
    for key in (node, f"/{node}", "/**"):
        if key in data:
            return data[key]["ros__parameters"]
    raise AssertionError(f"{rel} has no parameters for {node}")


def _node_params(spec, cls):
    """The dataclass the node's declare_config builds: its parameter files, then the spec's parameters."""
    merged: dict = {}
    for rel in spec.parameter_files:
        merged.update(_yaml_params(rel, spec.name))
    merged.update(spec.parameters)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(merged) <= names, f"{spec.name}: parameters the node does not declare: {set(merged) - names}"
    return cls(**merged)


def _demo_specs(**models) -> dict:
    cfg = DemoConfig(allow_untrained=False, **models)
    generator, policy, untrained = resolve_models(cfg, log=_no_log)
    assert not untrained
    return {s.name: s for s in graph_specs(cfg, generator, policy, camera_size(cfg, policy))}


def _card(onnx: Path) -> dict:
    card_path = onnx.with_name(onnx.stem + ".card.json")
    assert card_path.is_file(), f"{onnx.name} has no model card {card_path.name}"
    card = json.loads(card_path.read_text())
    assert card["name"] == onnx.stem
    files = card["files"]
    assert Path(files["onnx"]).name == onnx.name, f"card {card_path.name} names {files['onnx']}"
    weights = onnx.with_name(Path(files["weights"]).name)
    assert weights.is_file() and weights.suffix == ".safetensors", f"card {card_path.name}: no weights {weights}"
    return card


def _session(onnx: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_loads_through_the_demo_path_and_matches_its_card_and_contract(name):
    from rcan_perception.contract import GeneratorContract, contract_path
    from rcan_perception.perception_core import CanonicalGenerator
    from rcan_perception.perception_node import PerceptionNodeParams

    spec = _demo_specs(generator_model=f"models/{name}")["perception_node"]
    params = _node_params(spec, PerceptionNodeParams)
    onnx = Path(params.model_path)
    assert onnx == MODELS_DIR / name
    # As PerceptionNode.__init__ does it.
    gen = CanonicalGenerator(params.model_path, params.runtime_config(), params.contract_path or None, log=_no_log)

    card = _card(onnx)
    files = card["files"]
    assert files["onnx_bytes"] == onnx.stat().st_size
    assert files["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest(), "ONNX differs from its card"
    cpath = contract_path(onnx)
    assert cpath.is_file() and Path(files["contract"]).name == cpath.name
    assert json.loads(cpath.read_text()) == card["contract"]
    assert GeneratorContract.load(cpath) == gen.contract
    assert onnx.with_name(Path(files["weights_config"]).name).is_file()

    # The contract against the graph itself.
    c, sess = gen.contract, _session(onnx)
    (inp,) = sess.get_inputs()
    assert inp.name == c.input_name and inp.type == "tensor(float)"
    assert inp.shape[1] == 3, inp.shape
    # H and W are either free (a fully convolutional graph) or the contract's size.
    assert all(isinstance(d, str) or d == want for d, want in zip(inp.shape[2:], (c.input_height, c.input_width)))
    assert [o.name for o in sess.get_outputs()] == list(c.output_names)
    assert c.num_classes == card["generator"]["num_classes"]

    # One frame through the node's call: canonical image, labels and depth at the model's size.
    rng = np.random.default_rng(0)
    out = gen(rng.integers(0, 256, (c.input_height, c.input_width, 3), dtype=np.uint8))
    assert out.canonical.shape == (1, c.input_height, c.input_width, 3) and out.canonical.dtype == np.uint8
    assert out.labels.shape == (1, c.input_height, c.input_width) and int(out.labels.max()) < c.num_classes
    depth = np.asarray(out.depth_m)
    assert np.isfinite(depth).all()
    assert (c.depth_min_m - 1e-3 <= depth).all() and (depth <= c.depth_max_m + 1e-3).all()


@pytest.mark.parametrize("name", POLICIES)
def test_policy_loads_through_the_demo_path_and_matches_its_card(name):
    from rcan_grasp_policy.inputs import ONNX_METADATA_KEY
    from rcan_grasp_policy.planner import load_planner, resolve_inputs
    from rcan_grasp_policy.policy_node import PolicyNodeParams

    spec = _demo_specs(policy_model=f"models/{name}")["policy_node"]
    params = _node_params(spec, PolicyNodeParams)
    onnx = Path(params.model_path)
    assert onnx == MODELS_DIR / name
    # As PolicyNode.__init__ does it.
    bounds = params.bounds()
    planner = load_planner(params.model_path, params.runtime_config(), params.cem_config(), bounds, params.seed,
                           log=_no_log)
    inputs = resolve_inputs(params.image_inputs, planner.in_channels, planner.meta.get("variant"))

    card = _card(onnx)
    qnet = card["model"]["qnet"]
    assert (planner.in_channels, planner.image_size) == (qnet["in_channels"], qnet["image_size"])
    weights_config = onnx.with_name(onnx.stem + ".json")
    assert weights_config.is_file() and json.loads(weights_config.read_text())["qnet"] == qnet

    # The graph's inputs/outputs against the card's io section and the embedded metadata.
    sess = _session(onnx)
    meta = json.loads(sess.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY])
    assert meta["qnet"] == qnet and meta == planner.meta
    ins = {i.name: i for i in sess.get_inputs()}
    assert set(ins) == set(card["io"]["inputs"]) == {"images", "state", "actions"}
    assert [o.name for o in sess.get_outputs()] == list(card["io"]["outputs"]) == ["q"]
    s, ch = qnet["image_size"], qnet["in_channels"]
    assert ins["images"].shape[1:] == [ch, s, s] and ins["state"].shape[1:] == [2] and ins["actions"].shape[2:] == [8]
    if meta.get("variant") == "rcan":
        assert inputs == "source+canonical" and ch == 6

    # The contract: the sidecar beside the ONNX file is what the loader gives, and it matches the graph,
    # the card, the node's resolved inputs and the node's action bounds.
    from rcan_common.action import ACTION_NAMES, STATE_NAMES
    from rcan_grasp_policy.contract import ONNX_CONTRACT_KEY, PolicyContract, contract_path

    cpath = contract_path(onnx)
    assert cpath.is_file(), f"{name} has no contract {cpath.name}"
    contract = planner.contract
    assert PolicyContract.load(cpath) == contract
    embedded = sess.get_modelmeta().custom_metadata_map.get(ONNX_CONTRACT_KEY)
    assert embedded is None or PolicyContract.from_json(embedded) == contract
    assert PolicyContract.from_metadata(meta) == contract, "the sidecar differs from what the metadata gives"
    assert (contract.channels, contract.image_size) == (ch, s)
    assert contract.inputs == inputs
    assert contract.state_names == STATE_NAMES and contract.action_names == ACTION_NAMES
    assert ins["state"].shape[1:] == [len(contract.state_names)]
    assert ins["actions"].shape[2:] == [len(contract.action_names)]
    assert contract.bounds == bounds
    if "contract" in card:
        assert card["contract"] == json.loads(cpath.read_text())

    # One decision through the node's planner, on an image prepared by the contract from a camera-size
    # frame: a valid, bounded action and a Q in [0, 1].
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (2 * s, 2 * s, 3), dtype=np.uint8)
    image = contract.prepare(frame, 255 - frame)
    assert image.shape == (s, s, ch) and image.dtype == np.uint8
    action, q = planner.act(image, np.array([1.0, 0.3], np.float32), 20)
    assert action.shape == (8,) and np.isfinite(action).all() and 0.0 <= q <= 1.0
    assert np.abs(action[:3]).max() <= bounds.max_translation + 1e-6
    assert abs(np.arctan2(action[3], action[4])) <= bounds.max_rotation + 1e-6
