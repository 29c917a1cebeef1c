"""Diagnostics through the frozen unCLIP decoder: the un²CLIP diffusion loss on held-out images and
encode-then-decode pictures."""
