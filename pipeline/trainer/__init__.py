"""The trainer: every schedule x seed x grid point as one batched computation, its
mini-batches, the shared set-up (device, determinism, initial weights) and typed results.

Imports the config, problems, schedules and core; imported by the engines, the comparison,
the reporting and the stages."""
