"""rcan grasping graph: `ros2 launch rcan_bringup grasp.launch.py [use_sim:=true] [rviz:=true] ...`

A thin adapter: the nodes, parameter files, parameters and remappings all come from
rcan_bringup.graph.build_graph, which `rcan launch` and the tests start as well.

A node whose package is not installed (rviz2 without a ROS desktop install) is skipped with
one log line, as `rcan launch` does: launch_ros would otherwise raise "package not found"
mid-launch and leave the nodes it had already started running as orphans.
"""
from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rcan_bringup.graph import LaunchArgs, argument_docs, build_graph, resolve


def _package_installed(package):
    # The lookup launch_ros does when it starts the node, done before anything is started.
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _nodes(context, *args, **kwargs):
    names = LaunchArgs().as_strings()
    args = LaunchArgs.from_strings({name: LaunchConfiguration(name).perform(context) for name in names})
    actions = []
    for spec in build_graph(args):
        if not spec.enabled(args):
            continue
        if not _package_installed(spec.package):
            actions.append(LogInfo(msg=f"[rcan] package '{spec.package}' not found: skipping node '{spec.name}' "
                                       f"(install ros-jazzy-{spec.package.replace('_', '-')} to run it)"))
            continue
        parameters = [str(resolve(path)) for path in spec.parameter_files]
        if spec.parameters:
            parameters.append(dict(spec.parameters))
        actions.append(Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=parameters,
            remappings=list(spec.remappings),
            arguments=list(spec.arguments),
            output="screen",
        ))
    return actions


def generate_launch_description():
    docs = argument_docs()
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=docs.get(name, ""))
        for name, default in LaunchArgs().as_strings().items()
    ]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
