"""What people read: per-step tables, the train report and ranking, the tuning report and
claims, and every figure (PNG with no timestamps).

Imports everything below it except :mod:`pipeline.tracking`; imported only by the stages and
the CLI."""
