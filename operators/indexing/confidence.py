"""The confidence threshold of Hough indexing: below it a solution is reported and exported as not indexed."""

from __future__ import annotations

__all__ = ["MIN_CONFIDENCE"]

#: Default confidence below which a point with a solution is reported and
#: exported as not indexed (``--min-confidence``). The store keeps every raw
#: solution; only summaries, exports and pictures apply the threshold.
#:
#: Chosen by measurement (``bench/confidence_threshold.py``): 24 simulated
#: 20 x 20 Ni scans (dynamical master pattern, 60 x 60 detector, doses 3 to
#: 200 counts per pixel) Hough-indexed with the right projection centre and
#: with PCs off by 0.01 to 0.2 or set to (0.5, 0.5, 0.5). Right solutions
#: (< 5 degrees from the truth) have a median confidence of 0.15 at dose 3,
#: 0.31 at dose 5 and 0.46 or more from dose 10; wrong ones (> 15 degrees) a
#: median of 0 to 0.08. With the right PC, 0.10 keeps 99.3 % of the points at
#: dose 5 and 100 % from dose 10 (79.5 % at dose 3), every one of them right,
#: and it rejects 80 to 93 % of the wrong solutions: scans indexed with PC
#: (0.5, 0.5, 0.5) report 7 % indexed instead of 100 %, with PC x off by 0.12
#: 31 % (their solutions are 13 degrees off), and the issue's case (a scan
#: with PC x 0.5 indexed with 0.3) 18 %. A threshold of 0.20
#: rejects 90 to 98 % of wrong solutions but drops 7 % of right points at dose
#: 5 and 44 % at dose 3. With the default 15 bands the confidence comes in
#: steps of 1/13: 0.10 asks for a winner at least two votes ahead of the
#: runner-up (with 9 bands, steps of 1/7: one vote).
MIN_CONFIDENCE = 0.10
