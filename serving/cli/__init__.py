"""The `segments` command: every command of the product, registered here explicitly, grouped by door (data,
models, serving, segments, reports). Each group lives in its own *_commands module; what they share is in common.

It lives in serving/ because imports flow features <- training <- serving and the commands need all three.
"""

from __future__ import annotations

import typer

from serving.cli import data_commands, model_commands, report_commands, segment_commands, serve_commands

GROUPS = {
    "Data": data_commands.COMMANDS,
    "Models": model_commands.COMMANDS,
    "Scoring and serving": serve_commands.COMMANDS,
    "Segments": segment_commands.COMMANDS,
    "Reports": report_commands.COMMANDS,
}


def make_app() -> typer.Typer:
    app = typer.Typer(
        name="segments",
        help="Predictive customer segments for loyalty programmes: data, features, models, scores, segments, "
             "reports.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for panel, commands in GROUPS.items():
        for name, command in commands.items():
            if isinstance(command, typer.Typer):  # a command with subcommands (segments campaign create|list|...)
                app.add_typer(command, name=name, rich_help_panel=panel)
            else:
                app.command(name, rich_help_panel=panel, short_help=_first_sentence(command.__doc__))(command)
    return app


def _first_sentence(text: str) -> str:
    """The command list shows each command's first sentence; `segments COMMAND --help` shows all of it."""
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[:end + 1]


app = make_app()


def main() -> None:
    from training.runtime import configure_runtime

    configure_runtime()
    app()
