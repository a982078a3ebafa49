"""The two exceptions the command line turns into an exit code: UserError (2) and SearchFailed (1)."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints its one-line message and exits 2."""


class SearchFailed(Exception):
    """The search ran but produced nothing to evaluate (every trial failed); exit code 1."""
