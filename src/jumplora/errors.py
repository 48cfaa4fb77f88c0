"""The one exception type for problems a user can fix.

Library code raises :class:`JumploraError` (a ``ValueError``) with a message that names what is wrong
and what to change. The command line catches it, prints the message on one line and exits with code 2;
nothing else is caught there, so a bug still shows its traceback.
"""


class JumploraError(ValueError):
    """A bad input or setting; the message says what to change."""
