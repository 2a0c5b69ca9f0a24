"""The super-weights analysis (``suites/test_super_weights.py``): its cells in :mod:`harness.super_weights.cells`.

The detection itself is :mod:`harness.scoring.superweights`; the perturbations are recipes of :mod:`harness.recipes`.
"""
