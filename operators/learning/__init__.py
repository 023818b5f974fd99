"""Learned models: the versioned model artefact and the operators that apply one.

A training job (:mod:`diffraflow.flow.jobs`) writes a **model artefact**, a
directory described by :mod:`diffraflow.operators.learning.artefact`; operators
here load it once per worker and fold its content hash into their identity.
Network architectures live in :mod:`diffraflow.operators.learning._models`
(imported lazily: importing this package never imports torch).
"""
