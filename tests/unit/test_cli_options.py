"""The command line's option parsing (pure logic: no etcd, no process)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from tasklease.cli import (
    DEFAULTS,
    UsageError,
    _finite_float,
    _non_negative_float,
    _positive_float,
    build_parser,
    resolve_environment,
)

NUMBER_TYPES = (_finite_float, _positive_float, _non_negative_float)


def all_actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_actions(sub)


def test_no_option_takes_a_plain_float():
    # float("nan") and float("inf") succeed: every number option must use a finite parser
    plain = [(prog, a.dest) for prog, a in all_actions(build_parser()) if a.type is float]
    assert plain == []


def test_there_are_number_options_to_check():
    numbers = {(prog, a.dest) for prog, a in all_actions(build_parser()) if a.type in NUMBER_TYPES}
    for expected in [
        ("tasklease", "etcd_timeout"),
        ("tasklease submit", "timeout"),
        ("tasklease submit", "backoff"),
        ("tasklease submit", "retention"),
        ("tasklease submit", "wait_timeout"),
        ("tasklease wait", "timeout"),
        ("tasklease worker", "grace"),
        ("tasklease worker", "weight"),
        ("tasklease worker", "heartbeat"),
        ("tasklease scheduler", "deadline_grace"),
    ]:
        assert expected in numbers


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("parse", NUMBER_TYPES, ids=lambda f: f.__name__)
def test_number_parsers_refuse_non_finite_values(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        parse(text)


def test_number_parsers_ranges():
    assert _finite_float("-2.5") == -2.5
    assert _non_negative_float("0") == 0.0
    assert _positive_float("0.1") == 0.1
    for parse, bad in [(_positive_float, "0"), (_positive_float, "-1"), (_non_negative_float, "-0.5")]:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: 'abc'"):
        _finite_float("abc")


def parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    return resolve_environment(build_parser().parse_args(argv), environ)


def test_environment_fills_what_the_command_line_does_not_give():
    args = parse(
        ["list"],
        {"TASKLEASE_ETCD": "h:1", "TASKLEASE_ETCD_TIMEOUT": "2.5", "TASKLEASE_LOG_LEVEL": "DEBUG"},
    )
    assert (args.etcd, args.etcd_timeout, args.log_level, args.namespace) == (
        "h:1",
        2.5,
        "debug",
        "tasklease",
    )
    # an option wins over its variable, before or after the command name
    args = parse(["--etcd-timeout", "7", "list", "--namespace", "ns"], {"TASKLEASE_ETCD_TIMEOUT": "abc"})
    assert (args.etcd_timeout, args.namespace) == (7.0, "ns")
    # nothing given: the defaults; an empty variable counts as unset
    args = parse(["list"], {"TASKLEASE_ETCD_TIMEOUT": "", "TASKLEASE_ETCD_USER": ""})
    assert args.etcd_timeout == DEFAULTS["etcd_timeout"] and args.etcd == DEFAULTS["etcd"]
    assert args.etcd_user is None and args.log_level is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TASKLEASE_ETCD_TIMEOUT", "abc", "not a number"),
        ("TASKLEASE_ETCD_TIMEOUT", "nan", "not a finite number"),
        ("TASKLEASE_ETCD_TIMEOUT", "inf", "not a finite number"),
        ("TASKLEASE_ETCD_TIMEOUT", "0", "must be > 0"),
        ("TASKLEASE_LOG_LEVEL", "loud", "unknown log level"),
    ],
)
def test_a_bad_environment_value_names_its_variable(variable, value, message):
    with pytest.raises(UsageError, match=f"environment variable {variable}: {message}"):
        parse(["list"], {variable: value})


def test_a_usage_error_cuts_a_long_argument_it_quotes(capsys):
    # A 4.5 KB payload given without --payload: argparse refuses it and quotes it.
    payload = '{"blob":"' + "x" * 4500 + '"}'
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["submit", "noop", payload])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tasklease: error: unrecognized arguments: ")
    assert "[4,511 characters]" in err
    assert len(err) < 300
    assert err.count("\n") == 1
