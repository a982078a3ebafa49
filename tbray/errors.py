"""The exceptions the command line turns into an exit code: UserError (2), SearchFailed and ParityError (1).

Kept in this light module so a command can name them before torch or Ray is imported."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints its one-line message and exits 2."""


class SearchFailed(Exception):
    """The search ran but produced nothing to evaluate (every trial failed); exit code 1."""


class ParityError(Exception):
    """ONNX Runtime and PyTorch disagree on a graph just exported; it is not written (exit code 1)."""
