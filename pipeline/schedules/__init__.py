"""Learning-rate schedules: scheduler entries parsed into specs (rules through an ast grammar,
never eval), built on an optimizer, traced, previewed, and in closed form.

Imports :mod:`pipeline.core` and :mod:`pipeline.problems` (the model's layers, for per-layer
rules); imported by the config, the trainer and the comparison."""
