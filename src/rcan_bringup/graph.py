"""The rcan node graph as data.

`build_graph(args)` is the single description of which nodes run, with which parameter
files, parameters and remappings.  Three consumers read it and nothing else:

* ``launch/grasp.launch.py`` turns every enabled spec into a ``launch_ros`` ``Node``;
* :mod:`rcan_bringup.launcher` (``rcan launch``) starts the same specs as processes;
* the tests (unit, integration, fault) start the graph through the launcher.

Topic names inside the nodes are their defaults, all relative: ``namespace`` moves the whole
robot's graph.  Only the sim graph's supervisor calls other nodes' services (sim_node/reset,
policy_node/start_episode, sim_node/grasp_success), by relative names too.  Launch arguments that
move a topic (``controller_topic``, ``camera_source``) do it by remapping, so one argument
always moves both ends of a connection.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rcan_common.config import require
from rcan_common.domains import DOMAINS

PACKAGE = "rcan_bringup"

# The nodes' (relative) names; a remapping's left side matches them in any namespace.
DEFAULT_CONTROLLER_TOPIC = "lbr/joint_trajectory_controller/joint_trajectory"
DEFAULT_IMAGE_TOPIC = "camera/image_raw"
DEFAULT_CAMERA_INFO_TOPIC = "camera/camera_info"
_TOPIC_NAME = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")

Condition = Literal["always", "use_sim", "not use_sim", "rviz"]


@dataclass(frozen=True)
class LaunchArgs:
    """Launch arguments of the rcan grasping graph (the same for `ros2 launch` and `rcan launch`)."""

    use_sim: bool = False
    """Run the pybullet sim_node in place of the robot and camera (default: real robot)."""
    rviz: bool = False
    """Start rviz2 with rviz/rcan.rviz."""
    generator_model: str = "models/generator_64.onnx"
    """ONNX generator G used by perception_node (relative paths are under the package share dir)."""
    policy_model: str = "models/policy_rcan_128.onnx"
    """ONNX Q-network used by policy_node (relative paths are under the package share dir)."""
    namespace: str = ""
    """Namespace for every node (empty: root)."""
    controller_topic: str = DEFAULT_CONTROLLER_TOPIC
    """JointTrajectory command topic of the joint trajectory controller (or of sim_node); relative names are in `namespace`."""
    joint_prefix: str = "lbr_"
    """Prefix of the arm joint names: <prefix>A1 .. <prefix>A7 (lbr_fri_ros2_stack convention)."""
    camera_source: str = DEFAULT_IMAGE_TOPIC
    """Image topic perception and policy read (relative: in `namespace`); the camera_info topic is its sibling `camera_info`."""
    domain: str = "canonical"
    """sim_node's rendering domain: canonical, randomized, held-out, mild, medium or heavy (use_sim only)."""
    image_size: int = 472
    """sim_node camera resolution (square, pixels; use_sim only)."""
    seed: int = 0
    """sim_node seed of the first episode (use_sim only)."""
    allow_generator_mismatch: bool = False
    """Run an RCAN policy with another generator than the one it was trained on (refused by default: it grasps less)."""

    def __post_init__(self) -> None:
        for name in ("controller_topic", "camera_source"):
            require(bool(_TOPIC_NAME.fullmatch(getattr(self, name))), name, "must be a ROS topic name")
        require(self.domain in DOMAINS, "domain", f"must be one of {DOMAINS}")
        require(self.image_size >= 16, "image_size", "must be >= 16")
        require(self.generator_model != "", "generator_model", "must not be empty")
        require(self.policy_model != "", "policy_model", "must not be empty")
        require(self.namespace == "" or self.namespace.strip("/").replace("_", "").replace("/", "").isalnum(),
                "namespace", f"{self.namespace!r} is not a valid ROS namespace")
        if not self.allow_generator_mismatch:
            from rcan_grasp_policy.backends import generator_mismatch

            problem = generator_mismatch(resolve(self.policy_model), resolve(self.generator_model), resolve)
            require(problem is None, "generator_model", f"{problem} (or set allow_generator_mismatch)")

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> "LaunchArgs":
        """Build from launch-configuration strings ("true"/"false", numbers as text)."""
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, object] = {}
        for name, text in values.items():
            if name not in hints:
                raise ValueError(f"unknown launch argument {name!r}")
            kind = hints[name]
            if kind == "bool":
                lowered = text.strip().lower()
                if lowered not in ("true", "false", "1", "0"):
                    raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
                kwargs[name] = lowered in ("true", "1")
            elif kind == "int":
                kwargs[name] = int(text)
            else:
                kwargs[name] = text
        return cls(**kwargs)

    def as_strings(self) -> dict[str, str]:
        """Launch-configuration defaults: every argument as the text `ros2 launch` would pass."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


def argument_docs() -> dict[str, str]:
    """Argument name -> one-line description (for DeclareLaunchArgument)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(LaunchArgs)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


@dataclass(frozen=True)
class NodeSpec:
    """One process of the graph, in the terms of launch_ros.actions.Node."""

    name: str
    executable: str
    package: str = PACKAGE
    parameter_files: tuple[str, ...] = ()
    """Paths relative to the package share dir (config/*.yaml)."""
    parameters: dict[str, object] = field(default_factory=dict)
    """Extra parameters set on top of the files (launch-argument driven)."""
    remappings: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    condition: Condition = "always"
    arguments: tuple[str, ...] = ()
    """Plain command-line arguments before --ros-args (rviz2's -d <file>)."""

    def enabled(self, args: LaunchArgs) -> bool:
        return {
            "always": True,
            "use_sim": args.use_sim,
            "not use_sim": not args.use_sim,
            "rviz": args.rviz,
        }[self.condition]


def share_dir() -> Path:
    """Where config/, launch/, rviz/ and models/ live: the source tree when running from it
    (editable install, CI, `colcon build --symlink-install`), else the ament share dir."""
    source_root = Path(__file__).resolve().parents[2]
    if (source_root / "config").is_dir() and (source_root / "launch").is_dir():
        return source_root
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE))


def resolve(path: str, root: Path | None = None) -> Path:
    """A share-relative path (config/x.yaml, models/g.onnx) as an absolute path; absolute stays."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or share_dir()) / p


def _image_remaps(args: LaunchArgs) -> tuple[tuple[str, str], ...]:
    if args.camera_source == DEFAULT_IMAGE_TOPIC:
        return ()
    parent = args.camera_source.rpartition("/")[0]
    info = f"{parent}/camera_info" if parent or args.camera_source.startswith("/") else "camera_info"
    return ((DEFAULT_IMAGE_TOPIC, args.camera_source), (DEFAULT_CAMERA_INFO_TOPIC, info))


def _controller_remaps(args: LaunchArgs) -> tuple[tuple[str, str], ...]:
    if args.controller_topic == DEFAULT_CONTROLLER_TOPIC:
        return ()
    return ((DEFAULT_CONTROLLER_TOPIC, args.controller_topic),)


def build_graph(args: LaunchArgs) -> list[NodeSpec]:
    """Every node of the graph (enabled or not, see NodeSpec.condition), in start order."""
    ns = args.namespace
    images = _image_remaps(args)
    controller = _controller_remaps(args)
    return [
        NodeSpec(
            name="sim_node",
            executable="sim_node",
            parameter_files=("config/sim.yaml",),
            parameters={"domain": args.domain, "joint_prefix": args.joint_prefix,
                        "image_size": args.image_size, "seed": args.seed},
            remappings=controller + images,
            namespace=ns,
            condition="use_sim",
        ),
        NodeSpec(
            name="camera_node",
            executable="camera_node",
            parameter_files=("config/camera.yaml",),
            remappings=images,
            namespace=ns,
            condition="not use_sim",
        ),
        NodeSpec(
            name="perception_node",
            executable="perception_node",
            parameter_files=("config/perception.yaml",),
            parameters={"model_path": str(resolve(args.generator_model))},
            remappings=images,
            namespace=ns,
        ),
        NodeSpec(
            name="policy_node",
            executable="policy_node",
            parameter_files=("config/policy.yaml",),
            # In sim the supervisor starts each episode (after the sim's reset); the robot starts one at once.
            parameters={"model_path": str(resolve(args.policy_model)), "autostart": not args.use_sim},
            remappings=images,
            namespace=ns,
        ),
        NodeSpec(
            name="iiwa_driver_node",
            executable="iiwa_driver_node",
            parameter_files=("config/iiwa_driver.yaml",),
            parameters={"joint_prefix": args.joint_prefix},
            remappings=controller,
            namespace=ns,
        ),
        NodeSpec(
            # Sim only: reset the sim, start the policy's episode, judge it when it ends, N times.
            name="supervisor_node",
            executable="supervisor_node",
            parameter_files=("config/supervisor.yaml",),
            namespace=ns,
            condition="use_sim",
        ),
        NodeSpec(
            name="rviz2",
            package="rviz2",
            executable="rviz2",
            arguments=("-d", str(resolve("rviz/rcan.rviz"))),
            namespace=ns,
            condition="rviz",
        ),
    ]


def enabled_nodes(args: LaunchArgs) -> list[NodeSpec]:
    """The nodes that run for `args`."""
    return [spec for spec in build_graph(args) if spec.enabled(args)]


def with_parameters(specs: list[NodeSpec], overrides: dict[str, dict[str, object]]) -> list[NodeSpec]:
    """`specs` with extra parameters per node name (on top of the files), e.g. a demo's
    episode count or a test's camera rate.  Unknown node names are an error."""
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise KeyError(f"no node(s) {sorted(unknown)} in the graph")
    return [dataclasses.replace(s, parameters={**s.parameters, **overrides.get(s.name, {})}) for s in specs]


def sim_graph(generator_model: str | Path, policy_model: str | Path, image_size: int = 64, domain: str = "canonical",
              seed: int = 0, overrides: dict[str, dict[str, object]] | None = None) -> list[NodeSpec]:
    """The use_sim graph (sim, perception, policy, driver, supervisor) with the given models: what
    the demo, the benchmark and the integration tests start."""
    args = LaunchArgs(use_sim=True, image_size=image_size, domain=domain, seed=seed,
                      generator_model=str(generator_model), policy_model=str(policy_model))
    return with_parameters(enabled_nodes(args), overrides or {})
