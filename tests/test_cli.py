"""The `vmtl` entry point: help, unknown commands, lazy dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmtl.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "train" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_runs_without_importing_torch() -> None:
    code = "import sys; from vmtl.cli import main; main(['frobnicate']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_imports_only_the_arguments_module(name: str) -> None:
    """`vmtl X --help` is instant: it loads X's light arguments module, never torch or ONNX Runtime."""
    code = (
        "import contextlib, io, sys\n"
        "from vmtl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        main([{name!r}, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        f"assert 'usage: vmtl {name}' in out.getvalue(), out.getvalue()\n"
        "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"vmtl {name} --help imported {proc.stdout.strip()}"


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.run != c.arguments])
def test_argument_errors_do_not_import_the_run_module(name: str) -> None:
    """A bad option is refused by the arguments module alone: the run module (and torch) never load."""
    code = (
        "import contextlib, io, sys\n"
        "from vmtl.cli import COMMANDS, main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        main([{name!r}, '--no-such-option'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 2, exc.code\n"
        f"print(COMMANDS[{name!r}].run in sys.modules, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_demo_print_config_answers_without_the_run_module(tmp_path: Path) -> None:
    """`vmtl demo --print-config` is answered by the arguments module: the config's text, no torch."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n")
    code = (
        "import sys\n"
        "from vmtl.cli import main\n"
        f"status = main(['demo', '--print-config', '--config', {str(mine)!r}])\n"
        "print(status, [m for m in ('torch', 'vmtl.demo.run') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["name: mine", "0 []"]
