"""The refusal of a bad command line, read where a user reads it: its one error line."""

import re


def error_line(text, flag):
    """The message of the one error line of `text` (stderr, or a SystemExit's message), which names `flag`.

    argparse prints its usage block, which lists every flag the parser has, and then `prog: error: ...`;
    common.fail stops with `error: ...`. So `flag in stderr` holds for any flag of the parser: what must
    name the flag is the error line itself, the last line, and a single line (no traceback after it,
    no message running on to a second line)."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(\S+: )?error: ", line)]
    assert len(errors) == 1, f"not exactly one error line in:\n{text}"
    assert lines[-1] == errors[0], f"the error line is not the last line of:\n{text}"
    message = errors[0].split("error: ", 1)[1]
    named = re.search(rf"{re.escape(flag)}(?![\w-])", message)  # --lr is not named by --lr_d
    assert named, f"{flag!r} is not named by the error line {errors[0]!r}"
    return message
