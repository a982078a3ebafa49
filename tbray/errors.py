"""The one exception type that means "the user asked for something we can't do"."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints its one-line message and exits 2."""


class SearchFailed(Exception):
    """The search ran but produced nothing to evaluate (every trial failed); exit code 1."""
