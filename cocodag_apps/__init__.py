"""cocodag_apps: the thin top layer — the whole-pipeline apps that need all three packages.

Data flows one way: ``cocodag`` (foundation: dataset builder, shared base, file formats) -> ``maxent_train``
(trainer, export) -> ``oodscore`` (scores, metrics, reports). The apps here sit above all three and are the only code
that imports them together:

* :mod:`cocodag_apps.demo`    ``cocodag demo OUT``: every stage on the embedded demo world, through the CLIs.
* :mod:`cocodag_apps.predict` ``maxent-train predict``: our model's inference + oodscore's scorers and figures.
* :mod:`cocodag_apps.cli`     the installed ``cocodag`` and ``maxent-train`` console scripts (each lower package's
  commands plus the app above).

No package below imports this one (``tests/test_layers.py`` checks it).
"""
__version__ = "0.1.0"
