"""Where units of training run: this machine (single-threaded processes, one per usable CPU)
or Ray tasks on a cluster, and train's runs cut into shards and merged bit for bit.

Imports the trainer and below; imported by the comparison, the reporting (figures render in
processes) and the stages. Only :mod:`pipeline.engines.execution` imports Ray, and only when
the Ray engine is chosen."""
