"""rcan_perception: generator G (U-Net + seg/depth heads), discriminator, losses, training, ONNX export and runtime, camera and perception nodes."""
