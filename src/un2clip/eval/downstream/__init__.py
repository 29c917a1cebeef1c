"""CLIP's downstream uses, each as its authors run it on a frozen encoder: open-vocabulary detection (ViLD),
monocular depth (DepthCLIP), point clouds (PointCLIP), video retrieval and action recognition (CLIP4Clip,
ActionCLIP)."""
