"""Frame preprocessing operators: background correction, normalisation, masking, binning.

Each module holds one ``frames`` operator (a new frame per frame); the pure
per-frame kernels they share live in :mod:`diffraflow.operators.preprocess._kernels`.

* ``remove_static_background``: subtract/divide a static background (given,
  the cube's ``static_background`` variable, or the scan mean in a first pass);
* ``remove_dynamic_background``: subtract/divide each frame's Gaussian blur;
* ``normalize``: per-frame z-score or min-max;
* ``detector_mask``: zero the pixels outside a circle or a boolean mask;
* ``bin_frames``: sum/mean over ``by x bx`` pixel blocks.
"""
