"""Building blocks that import nothing else of the project: atomic files and content hashes,
portable arithmetic, the optimizer factory, and the statistics every report uses.

Any module of the project may import these."""
