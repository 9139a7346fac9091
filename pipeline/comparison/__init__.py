"""The fair comparison (the tune stage): search spaces and their trial draws, the
equal-budget tuning protocol, and its scoring after AlgoPerf.

Imports the engines, the trainer and below; imported by the reporting and stages/tune.py."""
