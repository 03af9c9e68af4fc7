"""rcan_grasp_policy: QT-Opt Q-network, CEM, replay, trainer, evaluation and the policy node."""
