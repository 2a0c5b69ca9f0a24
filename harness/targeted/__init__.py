"""The targeted-perturbation analysis (``suites/test_targeted_perturbation.py``): its cells in
:mod:`harness.targeted.cells`."""
