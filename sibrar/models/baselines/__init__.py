"""Baseline recommenders, each in its own module, all on the one Model interface.

Importing this package registers them: rand, pop, mf, deepmf, dropoutnet, clcrec.
"""

from sibrar.models.baselines import clcrec, deepmf, dropoutnet, mf, pop, rand  # noqa: F401
