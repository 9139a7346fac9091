"""The ``lrsched`` group. It only dispatches: each command is imported when it is named, so a
stage's process runs its own command's module and no other (and ``dvc.yaml`` need not list
this one: nothing here can change an output)."""

from __future__ import annotations

import importlib

import click

from pipeline.core.process_exit import exit_now

# command -> the module that defines it, as a click command of the same name.
COMMANDS = {
    "generate": "pipeline.cli.generate",
    "tune": "pipeline.cli.tune",
    "train": "pipeline.cli.train",
    "plot": "pipeline.cli.plot",
    "schedulers": "pipeline.cli.tools",
    "preview": "pipeline.cli.tools",
    "validate": "pipeline.cli.tools",
    "ui": "pipeline.cli.tools",
}


class LazyGroup(click.Group):
    """Commands imported on first use: ``lrsched train`` never imports ``ui``'s module."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command), (module, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrsched")
def cli() -> None:
    """Reproducible learning-rate-scheduler experiments: DVC stages, MLflow records."""


def main() -> None:
    """The ``lrsched`` command. It ends without the interpreter's teardown
    (:mod:`pipeline.core.process_exit`): a stage's last output is written by then."""
    try:
        cli()
    except SystemExit as ended:  # click ends every command this way, failed or not
        exit_now(ended.code)
    exit_now(0)
