"""rcan_bringup: the node graph as data, the `rcan` CLI and the standalone launcher."""
