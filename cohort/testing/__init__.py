"""Test tooling, kept out of the pipeline's modules: nothing in a cohort run imports this package.

- :mod:`cohort.testing.weights`: nnU-Net model folders in TotalSegmentator's layout with random
  weights (small for tests, real size for benchmarks);
- :mod:`cohort.testing.parity`: run the reference TotalSegmentator on the same weights and compare;
- :mod:`cohort.testing.cohorts`: synthetic aging-study cohorts with planted effects.
"""
