"""Whole-scan statistics (``sig`` reductions with explicit merge and finalize).

* ``mean_pattern``: the mean frame, reduced as float64 ``(sum, count)`` partials;
* ``max_pattern``: the pixel-wise maximum frame.
"""
