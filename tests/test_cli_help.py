"""Every command and every option explains itself in --help (argparse's own help, nothing hand-written)."""

from __future__ import annotations

import argparse

import pytest

from rmtdeploy.cli import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_listed_with_a_summary(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest: bool(c.help) for c in action._choices_actions} == dict.fromkeys(COMMANDS, True)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_help(command, capsys):
    parser = _subparsers(build_parser())[command]
    assert parser.description and len(parser.description) > 40
    undocumented = [
        action.option_strings or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help and action.help.strip())
    ]
    assert not undocumented, f"rmtdeploy {command}: options without help: {undocumented}"
    assert main([command, "--help"]) == 0
    assert "usage: rmtdeploy " + command in capsys.readouterr().out
