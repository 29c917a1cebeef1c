"""CLIPasso: abstract sketches of an image, strokes optimised under a CLIP image tower (no model is trained).

:mod:`.rasterise` draws cubic Bézier strokes differentiably in torch, :mod:`.loss` is CLIPasso's loss on a
ClipModel, :mod:`.optimise` initialises strokes from the tower's saliency and runs Adam, :mod:`.files` reads
images and writes SVG/PNG.
"""
