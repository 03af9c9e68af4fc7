"""kuka_iiwa_driver: Cartesian target -> safety pipeline -> IK -> JointTrajectory for the iiwa."""
