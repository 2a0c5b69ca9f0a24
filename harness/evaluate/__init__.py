"""The lm-eval evaluation analysis (``suites/test_evaluate.py``): its cells (:mod:`harness.evaluate.cells`)."""
