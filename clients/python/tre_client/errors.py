"""The exceptions tre_client raises.

Every one is a TreError. An answer of the broker that is an error is an
APIError carrying the API's code and message (and the HTTP status); its
subclass says which code, so that a notebook can catch what it expects:

    try:
        client.submit(1, sql, purpose="…")
    except tre_client.RefusedError as e:
        print(e.message)   # names the construct and where it is
"""

class TreError(Exception):
    """Anything tre_client raises: an API error, an unreachable broker, a
    wait that timed out, a missing token."""


class APIError(TreError):
    """The broker refused a request. code is the API's error code (one of
    the Error schema's codes, or None when the answer had no error body),
    message its message, status the HTTP status, retry_after the seconds
    the broker asked to wait before trying again (429), if it said."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__("{} (HTTP {}{})".format(message, status, ", " + code if code else ""))
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class InvalidError(APIError):
    """invalid: the request is malformed or misses something (400)."""


class RefusedError(APIError):
    """refused: the SQL is not accepted (422); the message names the
    construct and its position."""


class UnauthorizedError(APIError):
    """unauthorized: no valid token (401)."""


class ForbiddenError(APIError):
    """forbidden: the token lacks the role or the project membership, or
    separation of duties forbids it (403)."""


class NotFoundError(APIError):
    """not_found: no such query, project or result (404)."""


class ConflictError(APIError):
    """conflict: the query is not in a status that allows this (409)."""


class BudgetError(APIError):
    """budget: the project's privacy budget cannot pay for it."""


class RateLimitedError(APIError):
    """rate_limited: too many submissions or dry runs at once (429); see
    retry_after."""


class UnavailableError(APIError):
    """unavailable: the broker cannot do this now (503)."""


class InternalError(APIError):
    """internal: the broker failed (500)."""


_BY_CODE = {
    "invalid": InvalidError,
    "refused": RefusedError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "budget": BudgetError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
    "internal": InternalError,
}


def api_error(status, code, message, retry_after=None):
    """The APIError for an error answer."""
    return _BY_CODE.get(code, APIError)(status, code, message, retry_after)


class BrokerUnreachable(TreError, ConnectionError):
    """The broker could not be reached, or did not answer in time."""


class WaitTimeout(TreError, TimeoutError):
    """Client.wait gave up. query is the query as last seen."""

    def __init__(self, query, timeout):
        super().__init__("query {} is still {} after {:g} s".format(query["id"], query["status"], timeout))
        self.query = query
        self.timeout = timeout
