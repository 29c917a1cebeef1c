"""The shapes world: a deterministic generator of small scenes of coloured shapes with captions.

Captions name shape and colour always and every other attribute rarely, so a CLIP trained on
them is blind to those attributes, as web-trained CLIP is. Modules, bottom up:

- :mod:`.scenes`      attribute tables and seeded scene sampling (pure values)
- :mod:`.words`       captions, statements, templates, class names, the vocabulary
- :mod:`.render`      pixels and segmentation masks
- :mod:`.evalsets`    MMVP-layout pairs, zero-shot and segmentation sets, ``generate_world``
- :mod:`.stages`, :mod:`.demo`, :mod:`.compare`, :mod:`.report`: the experiments run in the world
  (imported by name, not here: they load models and train)
"""

from un2clip.world.evalsets import MMVP_TYPES, generate_world, mmvp_pairs, zeroshot_scene
from un2clip.world.render import BACKGROUND, render, render_with_mask
from un2clip.world.scenes import (
    COLORS,
    COUNT_WORDS,
    GLYPHS,
    OBJECT_ATTRIBUTES,
    ORIENTATION_WORDS,
    ORIENTATIONS,
    ORIENTED_SHAPES,
    PLURALS,
    POSITION_WORDS,
    POSITIONS,
    RARE_ATTRIBUTES,
    RELATION_WORDS,
    SCENE_ATTRIBUTES,
    SHAPES,
    SIZES,
    STATE_WORDS,
    STATES,
    VIEWS,
    WORLD_VERSION,
    Scene,
    WorldObject,
    modify,
    place,
    sample_object,
    sample_scene,
)
from un2clip.world.words import (
    CAPTION_TEMPLATES,
    MMVP_PROMPT_PREFIX,
    WORLD_VOCABULARY,
    ZEROSHOT_TEMPLATES,
    caption,
    describe,
    phrase,
    seg_classes,
    world_vocabulary,
    zeroshot_tasks,
)

__all__ = [
    "BACKGROUND", "CAPTION_TEMPLATES", "COLORS", "COUNT_WORDS", "GLYPHS", "MMVP_PROMPT_PREFIX", "MMVP_TYPES",
    "OBJECT_ATTRIBUTES", "ORIENTATIONS", "ORIENTATION_WORDS", "ORIENTED_SHAPES", "PLURALS", "POSITIONS",
    "POSITION_WORDS", "RARE_ATTRIBUTES", "RELATION_WORDS", "SCENE_ATTRIBUTES", "SHAPES", "SIZES", "STATES",
    "STATE_WORDS", "VIEWS", "WORLD_VERSION", "WORLD_VOCABULARY", "ZEROSHOT_TEMPLATES", "Scene", "WorldObject",
    "caption", "describe", "generate_world", "mmvp_pairs", "modify", "phrase", "place", "render",
    "render_with_mask", "sample_object", "sample_scene", "seg_classes", "world_vocabulary", "zeroshot_scene",
    "zeroshot_tasks",
]
