"""Learned models: the versioned model artefact and the operators that apply one.

A training job (:mod:`diffraflow.flow.jobs`) writes a **model artefact**, a
directory described by :mod:`diffraflow.operators.learning.artefact`; operators
here load it once per worker and fold its content hash into their identity.
Network architectures live in :mod:`diffraflow.operators.learning._models`
and :mod:`~diffraflow.operators.learning._networks` (imported lazily:
importing this package never imports torch).

Operators: ``classify_patterns`` (any integer label), ``classify_space_group``
(six cubic space groups; a classifier ships in ``models/``) and
``predict_orientation`` (a crystal map from an orientation regressor).
Their building blocks, each usable on its own: ``rotations`` (6-D rotations,
point-group symmetry, disorientation, the symmetry-aware loss),
``projector`` (master-pattern projection in torch), ``refine`` (pattern
matching and refinement), ``training_data`` and ``materials`` (what the
models learn from), ``evaluation`` (confusion matrices, orientation errors,
Grad-CAM).
"""
