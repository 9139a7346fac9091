"""``lrsched``, the front door: a thin click shell over the stages and the library.

:mod:`pipeline.cli.main` is the group and only dispatches; each stage's command is a module of
its own (``generate``, ``train``, ``tune``, ``plot``), so that a stage depends on its own entry
point and nothing else; :mod:`pipeline.cli.tools` holds what a user reaches for. Nothing in the
project imports this package but ``pipeline.__main__`` and the console script.
"""
