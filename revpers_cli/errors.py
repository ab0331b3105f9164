"""The CLI's exit codes and the error that carries one (a readable message for people)."""

EXIT_OK = 0
EXIT_FAILED = 1          # the run failed: a face still recognizable after the retries, a bad item...
EXIT_USAGE = 2           # bad arguments, or settings that cannot anonymize (refused unless --force)
EXIT_MISSING = 3         # model files missing
EXIT_SERVER = 4          # no usable server, or the server stopped during the run
EXIT_UNANONYMIZED = 5    # written with --allow-unanonymized although the audit failed (the image is marked)
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure with a readable message and an exit code."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code
