"""The one exception type of ftlab's data layer.

Every problem with input data (a missing file, a malformed row, a label outside the label set, bytes that do not
decode) raises `DataError` naming the file and line it came from, so a user can open the file and fix it.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be read as the task expects; the message names file:line and what was wrong."""
