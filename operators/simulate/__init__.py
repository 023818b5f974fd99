"""Synthetic scans with ground truth: EBSD (master-pattern projection) and SPED (bicrystal spot model).

Modules: :mod:`~diffraflow.operators.simulate.master_patterns` (dynamical Ni and cached
kinematical master patterns), :mod:`~diffraflow.operators.simulate.ebsd` (Voronoi
grains, dose, noise), :mod:`~diffraflow.operators.simulate.sped` (inclined-boundary
bicrystal of seed paper 003), :mod:`~diffraflow.operators.simulate.grains` and
:mod:`~diffraflow.operators.simulate.noise` (pure NumPy kernels).

Importing this package is cheap: kikuchipy, orix and diffsims are imported
only when a master pattern is needed.
"""
