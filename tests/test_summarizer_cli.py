"""summarizer_cli: the `summarizer` console command dispatches each command to its module's main."""

from __future__ import annotations

import importlib.util

import pytest

import summarizer_cli
from summarizer_cli import SUBCOMMANDS, main


def test_every_command_names_a_module_that_exists():
    for name, (module, _, _) in SUBCOMMANDS.items():
        assert importlib.util.find_spec(module) is not None, f"summarizer {name}: no module {module}"


def test_no_arguments_or_help_print_the_commands(capsys):
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in SUBCOMMANDS)


def test_an_unknown_command_is_exit_2(capsys):
    assert main(["sumarize"]) == 2
    assert "unknown command 'sumarize'" in capsys.readouterr().err


@pytest.mark.parametrize("name, expected", [("fetch", ["fetch", "--name", "smollm2"]), ("batch", ["--help"])])
def test_the_modules_own_subcommand_goes_first(monkeypatch, name, expected):
    calls = []

    class Module:
        @staticmethod
        def main(argv):
            calls.append(argv)
            return None

    monkeypatch.setattr(summarizer_cli.importlib, "import_module", lambda module: Module)
    rest = ["--name", "smollm2"] if name == "fetch" else ["--help"]
    assert main([name, *rest]) == 0  # None from a module's main is success
    assert calls == [expected]


def test_fetch_help_is_core_embedded_fetch(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fetch", "--help"])
    assert exc.value.code == 0
    assert "--name" in capsys.readouterr().out
