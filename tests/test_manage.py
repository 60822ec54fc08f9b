"""manage.py's command line: the test command hands pytest every argument, in any order."""

from __future__ import annotations

import importlib.util

import pytest
from support.env import ROOT


def _manage():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("manage", ROOT / "manage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manage = _manage()


@pytest.mark.parametrize(
    "argv, fast, pytest_args",
    [
        (["test"], False, []),
        (["test", "tests/test_shops.py", "-x", "-q"], False, ["tests/test_shops.py", "-x", "-q"]),
        (["test", "-x", "-q", "tests/test_shops.py"], False, ["-x", "-q", "tests/test_shops.py"]),
        (["test", "--fast", "-k", "seckill"], True, ["-k", "seckill"]),
        (["test", "-k", "seckill", "--fast"], True, ["-k", "seckill"]),
        (["test", "-m", "not slow", "--ff"], False, ["-m", "not slow", "--ff"]),
        (["test", "--fa"], False, ["--fa"]),  # no prefix of --fast is ours
    ],
)
def test_the_test_command_hands_pytest_every_other_argument(argv, fast, pytest_args):
    args = manage.parse_args(argv)
    assert args.command == "test" and args.fast is fast and args.pytest_args == pytest_args


def test_other_commands_refuse_what_they_do_not_know(capsys):
    assert manage.parse_args(["up", "--port", "9000"]).port == 9000
    with pytest.raises(SystemExit):
        manage.parse_args(["up", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert manage.parse_args(["bench", "list"]).bench_args == ["list"]


@pytest.mark.parametrize(
    "pytest_args, chosen",
    [
        ([], False),
        (["-k", "seckill"], False),
        (["-n", "0"], True),
        (["-n4"], True),
        (["--numprocesses=2"], True),
        (["--numprocesses", "2"], True),
    ],
)
def test_the_fast_tier_spreads_over_the_cores_unless_told_how_many_workers(pytest_args, chosen):
    assert manage._names_workers(pytest_args) is chosen
