"""An extracted object checked against the caller's own schema after decoding, formats included
(RFC 3339 dates and times, which the grammar writes but jsonschema checks only with a checker)."""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping
from typing import Any

from .schema import escape, one_line, validator_class


_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$")


def is_date(value: object) -> bool:
    """RFC 3339 full-date: any four-digit year, 0000 included (which Python's dates cannot hold), and
    the days of its month, February 29 in leap years only."""
    if not isinstance(value, str):
        return True
    found = _DATE.match(value)
    if not found:
        return False
    year, month, day = (int(part) for part in found.groups())
    if not 1 <= month <= 12:
        return False
    return 1 <= day <= calendar.monthrange(2000 if year == 0 else year, month)[1]


def is_time(value: object) -> bool:
    """RFC 3339 full-time; second 60 (a leap second) is allowed, as the RFC and the grammar allow it."""
    if not isinstance(value, str):
        return True
    found = _TIME.match(value)
    if not found:
        return False
    hour, minute, second = (int(part) for part in found.groups()[:3])
    offset_ok = found.group(6) is None or (int(found.group(6)) <= 23 and int(found.group(7)) <= 59)
    return hour <= 23 and minute <= 59 and second <= 60 and offset_ok


def is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and is_date(date) and is_time(time)


@functools.cache
def format_checker() -> Any:
    """jsonschema's format checks, with date, time and date-time read as RFC 3339 reads them."""
    import jsonschema

    checker = jsonschema.FormatChecker()
    for name, check in (("date", is_date), ("time", is_time), ("date-time", is_date_time)):
        checker.checks(name)(check)
    return checker


def validation_error(schema: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not validate against ``schema`` (formats checked too), in one line; None if it does."""
    import jsonschema

    validator = validator_class(schema)(schema, format_checker=format_checker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/" + "/".join(escape(str(part)) for part in error.absolute_path)
    return f"at {where}: {one_line(error.message, 160)}"
