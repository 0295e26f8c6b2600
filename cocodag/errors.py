"""The error base of the whole project: a bad input or option, reported to the user in one line.

:class:`CocodagError` is the root; each package above the foundation has its own subclass
(``maxent_train.MaxentError``, ``oodscore.OodscoreError``). The CLI helper (:func:`cocodag.cli_utils.user_errors`)
catches exactly this root, so every error of ours becomes one ``error:`` line while any other exception (a bug,
including a ``ValueError`` raised inside numpy or torch) keeps its traceback.
"""


class CocodagError(ValueError):
    """A user-facing error: the message names the file/argument, what was expected and what was found.

    Messages are one line by construction: the constructor folds any line breaks into ``"; "`` so that what the
    user sees on the terminal is exactly ``str(error)``.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and "\n" in args[0]:
            args = ("; ".join(s.strip() for s in args[0].splitlines() if s.strip()),)
        super().__init__(*args)
