"""A budget as each door takes it: one parse (``tools.checks.budget_value``), each door its own forms.

The CLI reads a flag's text as ``int`` does; the MCP server takes JSON numbers and text of plain
digits; a run script is strict (a number is a number, text only says 'auto'). Every refusal says
what a budget may be in the same words, framed the door's way.
"""

from __future__ import annotations

import argparse

import pytest
from pydantic import TypeAdapter, ValidationError

from agent.cli import budget_value as cli_budget
from agent.script_schema import budget_value as script_budget
from mcp_server.arguments import Budget
from tools.checks import BUDGET_FORMS, budget_value
from tools.errors import InvalidRequest

NO = object()  # refused
TEXT_ONLY = object()  # the CLI reads only text

CASES = [
    # value, core, CLI, script, server
    ("auto", "auto", "auto", "auto", "auto"),
    (" AUTO ", "auto", "auto", " AUTO ", "auto"),
    ("280", 280, 280, NO, 280),
    (" 280 ", 280, 280, NO, 280),
    ("-5", -5, -5, NO, NO),
    ("+5", 5, 5, NO, NO),
    ("lots", NO, NO, NO, NO),
    ("", NO, NO, NO, NO),
    (280, 280, TEXT_ONLY, 280, 280),
    (None, None, TEXT_ONLY, None, None),
    (True, NO, TEXT_ONLY, NO, NO),
    (2.5, NO, TEXT_ONLY, NO, NO),
    (280.0, NO, TEXT_ONLY, NO, 280),
]

SERVER = TypeAdapter(Budget)


def outcome(call, value, refusals):
    try:
        return call(value)
    except refusals as exc:
        return NO, str(exc)


@pytest.mark.parametrize("value, core, cli, script, server", CASES)
def test_each_door_takes_its_own_forms_through_one_parse(value, core, cli, script, server):
    got = outcome(budget_value, value, InvalidRequest)
    assert got == core if core is not NO else got[0] is NO
    if cli is not TEXT_ONLY:
        got = outcome(cli_budget, value, argparse.ArgumentTypeError)
        assert got == cli if cli is not NO else got == (NO, f"{value!r} is not {BUDGET_FORMS}")
    got = outcome(script_budget, value, ValueError)
    assert got == script if script is not NO else got == (NO, f"should be {BUDGET_FORMS}")
    got = outcome(SERVER.validate_python, value, ValidationError)
    if server is not NO:
        assert got == server
    elif isinstance(value, str | bool):
        assert got[0] is NO and f"Input should be {BUDGET_FORMS}" in got[1]
    else:
        assert got[0] is NO  # a JSON number that is no whole number: pydantic's own sentence
