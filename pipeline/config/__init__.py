"""params.yaml validated at the edge into frozen typed sections; every error names the key,
the value and what is allowed.

Imports :mod:`pipeline.core`, and :mod:`pipeline.schedules` to check scheduler entries; every
layer above reads its typed params from here."""
