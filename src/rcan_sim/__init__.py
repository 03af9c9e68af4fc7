"""rcan_sim: the pybullet grasping world, randomized/canonical rendering, grasp env, paired-data generation."""
