"""Synthetic layered-oxide images and movies with exact labels (`dislotrack generate`).

In Python:

>>> import numpy as np
>>> from dislotrack.data_gen.sample import GeneratorConfig, make_sample
>>> from dislotrack.data_gen.movie import make_movie
>>> s = make_sample(np.random.default_rng(0), GeneratorConfig(size=64, mode="stem"))
>>> s.image.shape, list(s.cores.columns)[:4]  # cores in pixels, h into the extra half-plane
((64, 64), ['x', 'y', 'hx', 'hy'])
>>> m = make_movie(np.random.default_rng(0), GeneratorConfig(size=64), n_frames=3)
>>> m.frames.shape
(3, 64, 64)

`dislotrack.data_gen.export.generate_dataset` writes a folder as the command does;
`dislotrack.data_gen.conventions` defines pixel centres, **h**, **b** and the
glide/climb signs once for the whole package.
"""
