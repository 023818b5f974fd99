"""Training jobs: config files, labelled data, checkpoints, the runner and the built-in jobs.

The job contract is :mod:`diffraflow.flow.jobs`; this package holds one concern per module:

``config``      the job file (YAML/JSON): structure and values checked before any data is read
``data``        frames with their ground-truth labels, shuffled chunk by chunk, deterministic hold-out split
``checkpoint``  atomic checkpoints (safetensors + a JSON tree in one file; never pickle)
``runner``      :func:`~diffraflow.flow.training.runner.run_job`: lock, seeds, epochs, resume, artefact
``classifier``  the built-in ``train_pattern_classifier`` job (a small CNN)
``learned``     the built-in ``train_space_group`` and ``train_orientation`` jobs of the learned operators
                (AdamW, schedules, moving average of the weights, early stopping)
``datasets``    simulated training sets of many materials and geometries, written as cubes with their truth
"""
