"""A Ctrl-C while a script is still importing (torch alone takes seconds) ends it with one line
and exit code 130, like a Ctrl-C later on, instead of a traceback through the import machinery.
Kept free of heavy imports itself, so it is in place before they start."""
import contextlib
import sys


@contextlib.contextmanager
def quiet_interrupt():
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was done", file=sys.stderr)
        sys.exit(130)
