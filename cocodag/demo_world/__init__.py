"""The embedded demo world: synthetic street scenes, COCO-style proxies and an anomaly set in real formats.

``generate_demo_world(out)`` writes, so that the real loaders read it unchanged::

    OUT/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png     RGB
    OUT/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png                          Cityscapes labelIds
    OUT/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png                     trainIds (255 void)
    OUT/coco/annotations/instances_train2017.json                                                COCO instances
    OUT/coco/train2017/<id:012d>.jpg
    OUT/anomaly/{images,labels,roi}/<name>.png + meta.json        evaluation layout of docs/formats.md §2
    OUT/README.txt

Like scikit-learn's ``make_*`` generators, the public functions live here and the work in private modules:
``_canvas`` (camera, canvas, noise helpers), ``_street`` (the layout of a street scene), ``_objects`` (cars, poles,
trees, persons, anomalies), ``_coco`` (COCO-style proxy images) and ``_write`` (the real-format tree).

**Street scenes** (:func:`render_street`) are drawn with a pin-hole camera 1.3 m above a flat ground plane: a road
with lane markings converging to a vanishing point, curbs and sidewalks, terrain strips, façades of buildings with
windows (walls, fences and tree lines in the gaps), a far skyline, a sky gradient with clouds, and objects placed in
the world and sorted by depth (cars with wheels and windows, poles with traffic signs / lights / lamps, trees,
persons), then the ego-vehicle hood (labelId 1) with an unlabeled strip (labelId 0) below it. Everything is drawn in
relative coordinates, so any frame size works. Per-class colours are jittered per frame and each class gets its own
grain and blotch noise, plus global lighting and sensor noise: classes are separable by shape, context and texture,
not by a single colour.

**Held-out split of shapes and textures.** The COCO proxies (the OOD *training* signal) and the anomalies of the test
set never share a shape or a texture:

- proxies: shapes :data:`PROXY_SHAPES` (``blob``, ``star``, ``ellipse``) filled with :data:`PROXY_TEXTURES`
  (``stripes``, ``checker``, ``dots``);
- anomalies: shapes :data:`ANOMALY_SHAPES` (``cone``, ``box``, ``quadruped``, ``tire``) filled with
  :data:`ANOMALY_TEXTURES` (``camouflage``, ``radial``, ``speckle``), standing on the road like lost cargo, sized in
  metres and projected with the scene's perspective.

The two pairs of tuples are disjoint (a test checks it), so a model can only flag the anomalies by having learned
"unlike every street class", which is what MaxEnt training on proxies is meant to teach.

**Randomness.** Every frame/image draws from ``numpy.random.default_rng(SeedSequence([seed, stream, index]))``
(:func:`frame_rng`), so the bytes depend on the seed only, never on ``workers`` or scheduling.
"""
from ._coco import (
    DEFAULT_COCO_IMAGE_SIZE,
    EXCLUDED_CATEGORIES,
    PROXY_CATEGORIES,
    PROXY_SHAPES,
    PROXY_TEXTURES,
    render_coco_image,
)
from ._objects import ANOMALY_SHAPES, ANOMALY_TEXTURES
from ._street import render_anomaly_frame, render_street
from ._write import (
                    DEFAULT_ANOMALY_FRAMES,
                    DEFAULT_COCO_IMAGES,
                    DEFAULT_FRAME_SIZE,
                    DEFAULT_FRAMES,
                    DEFAULT_VAL_FRAMES,
                    STREAM_ANOMALY,
                    STREAM_COCO,
                    STREAM_TRAIN,
                    STREAM_VAL,
                    TRAIN_CITIES,
                    VAL_CITIES,
                    anomaly_name,
                    cityscapes_stem,
                    coco_image_id,
                    frame_rng,
                    generate_demo_world,
                    parse_size,
)

__all__ = [
    "ANOMALY_SHAPES", "ANOMALY_TEXTURES", "DEFAULT_ANOMALY_FRAMES", "DEFAULT_COCO_IMAGES", "DEFAULT_COCO_IMAGE_SIZE",
    "DEFAULT_FRAMES", "DEFAULT_FRAME_SIZE", "DEFAULT_VAL_FRAMES", "EXCLUDED_CATEGORIES", "PROXY_CATEGORIES",
    "PROXY_SHAPES", "PROXY_TEXTURES", "STREAM_ANOMALY", "STREAM_COCO", "STREAM_TRAIN", "STREAM_VAL", "TRAIN_CITIES",
    "VAL_CITIES", "anomaly_name", "cityscapes_stem", "coco_image_id", "frame_rng", "generate_demo_world",
    "parse_size", "render_anomaly_frame", "render_coco_image", "render_street",
]
