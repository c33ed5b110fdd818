"""The one exception the CLI turns into exit status 2."""


class BadInput(Exception):
    """Bad input: a spec, a data file or an argument that cannot be used as given.

    The message is shown to the user as it is, so it names what is wrong and what is
    allowed.
    """
