"""The one error type of tfmq-export.

Every failure the user can fix (bad input, a missing file, an artifact from another model,
an unsupported setting) raises ``TfmqError`` with one sentence that says what is wrong and what
to do. The command line turns it into ``click.ClickException`` (exit 1, one line, no traceback).
"""


class TfmqError(Exception):
    """A failure caused by the user's input or environment, with a message meant for them."""
