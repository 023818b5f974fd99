"""Restoration of short-exposure Kikuchi patterns: conditional diffusion, supervised and latent restorers.

Fast scans mean short exposures, noisy patterns and failed indexing. The
operator ``restore_patterns`` (:mod:`~diffraflow.operators.restoration.restore_patterns`)
maps each pattern to a restored one that later steps (``hough_index``)
index instead, with a model trained by ``diffraflow train``
(:mod:`diffraflow.flow.training.restoration`) or the small Ni model shipped
here (``models/ni_restorer.dfmodel``).

Modules: :mod:`~diffraflow.operators.restoration.degradation` (short
exposures synthesised from clean patterns),
:mod:`~diffraflow.operators.restoration.metrics` (PSNR, SSIM),
:mod:`~diffraflow.operators.restoration.models` (model records, loading),
``_unet`` (the conditional U-Net, its Radon-domain branch, the pattern
autoencoder), ``_diffusion`` (noise schedules, DDPM/DDIM/one-step samplers)
and ``_restorer`` (a loaded model restoring batches); the underscored
modules import torch, so importing this package never does.
"""
