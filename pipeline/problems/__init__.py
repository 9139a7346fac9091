"""What is trained: the tutorial's two-moons data and LogicNet, and the comparison's workloads
(a data set, a budget, a width) with their splits.

Imports only :mod:`pipeline.core`; everything above may import it."""
