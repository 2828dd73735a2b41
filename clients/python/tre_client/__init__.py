"""tre_client: the tre query broker from Python.

    import tre_client

    alice = tre_client.Client()                    # TRE_BROKER, TRE_TOKEN_RESEARCHER or tre-demo/tokens.env
    q = alice.submit(1, sql, purpose="Type 2 diabetes by region", epsilon=0.5)
    q = alice.wait(q["id"], final=True)            # through review, the run and the output check
    df = alice.result(q["id"])                     # a DataFrame with pandas, else Rows
    km = alice.km(q["id"])                         # Kaplan-Meier curve of a released survival table

Reviewers and output checkers use Client(role="reviewer") and
Client(role="output_checker"): approve/reject, release/withhold. The
standard library is all it needs; pandas, when installed, makes results
DataFrames. See docs/clients.md in the tre repository.
"""

__version__ = "0.1.0"

from .client import Client, describe_status
from .errors import (
    APIError,
    BrokerUnreachable,
    BudgetError,
    ConflictError,
    ForbiddenError,
    InternalError,
    InvalidError,
    NotFoundError,
    RateLimitedError,
    RefusedError,
    TreError,
    UnauthorizedError,
    UnavailableError,
    WaitTimeout,
)
from .survival import kaplan_meier
from .table import Rows, to_table

__all__ = [
    "Client", "describe_status", "Rows", "to_table", "kaplan_meier",
    "TreError", "APIError", "BrokerUnreachable", "WaitTimeout",
    "InvalidError", "RefusedError", "UnauthorizedError", "ForbiddenError", "NotFoundError",
    "ConflictError", "BudgetError", "RateLimitedError", "UnavailableError", "InternalError",
]
