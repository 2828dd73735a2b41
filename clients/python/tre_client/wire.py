"""What tre_client relies on in the broker's HTTP API.

Every request the client makes goes through an entry of OPERATIONS, and
the client reads no response field that FIELDS does not list. The tests
(tests/test_wire.py) check both against the broker's OpenAPI document
(api/openapi.json, served at /api/v1/openapi.json): a path, method, query
parameter, request or response schema or field that the document does not
have fails them, and so does a field the client's code reads without
declaring it here.
"""

from collections import namedtuple

Operation = namedtuple("Operation", "method path params request response")
Operation.__doc__ = """One API call: its method and path ({id} for the
numeric id), the query parameters the client may send, the request body's
schema (None: no body) and the schemas of its success response (a tuple:
several when the document answers oneOf them; "text/csv" for CSV)."""

_PAGE = ("limit", "offset")

OPERATIONS = {
    "datasets": Operation("GET", "/api/v1/datasets", _PAGE, None, ("CatalogList",)),
    "projects": Operation("GET", "/api/v1/projects", _PAGE, None, ("ProjectList",)),
    "project": Operation("GET", "/api/v1/projects/{id}", (), None, ("Project",)),
    "check": Operation("POST", "/api/v1/queries/check", (), "QueryRequest", ("CheckResponse",)),
    "dry_run": Operation("POST", "/api/v1/queries/dry-run", (), "QueryRequest", ("DryRunResponse",)),
    "submit": Operation("POST", "/api/v1/queries", (), "QueryRequest", ("Query",)),
    "queries": Operation("GET", "/api/v1/queries", _PAGE + ("status", "project_id"), None, ("QueryList",)),
    "query": Operation("GET", "/api/v1/queries/{id}", ("include",), None, ("Query",)),
    "cancel": Operation("POST", "/api/v1/queries/{id}/cancel", (), None, ("Query",)),
    "result": Operation("GET", "/api/v1/queries/{id}/result", ("format",), None, ("ResultResponse",)),
    "result_csv": Operation("GET", "/api/v1/queries/{id}/result", ("format",), None, ("text/csv",)),
    "review_queue": Operation("GET", "/api/v1/review/queue", _PAGE + ("include",), None, ("QueueItemList",)),
    "approve": Operation("POST", "/api/v1/queries/{id}/approve", (), "CommentRequest", ("Query",)),
    "reject": Operation("POST", "/api/v1/queries/{id}/reject", (), "ReasonRequest", ("Query",)),
    "output_queue": Operation("GET", "/api/v1/outputs/queue", _PAGE, None, ("QueryList",)),
    "output": Operation("GET", "/api/v1/queries/{id}/output", (), None, ("Output", "ReleasedResult")),
    "release": Operation("POST", "/api/v1/queries/{id}/release", (), "CommentRequest", ("Query",)),
    "withhold": Operation("POST", "/api/v1/queries/{id}/withhold", (), "ReasonRequest", ("Query",)),
}

# The request body fields the client sends, by schema.
REQUESTS = {
    "QueryRequest": ("project_id", "dataset", "sql", "purpose", "epsilon"),
    "CommentRequest": ("comment",),
    "ReasonRequest": ("reason",),
}

# The response fields the client reads, by schema ("Error.error" is the
# object in Error's error property). Everything else is passed on to the
# caller as the broker sent it.
FIELDS = {
    "Error": ("error",),
    "Error.error": ("code", "message"),
    "CatalogList": ("items", "total"),
    "ProjectList": ("items", "total"),
    "QueryList": ("items", "total"),
    "QueueItemList": ("items", "total"),
    "Query": ("id", "status", "history"),
    "Column": ("name", "kind"),
    "ResearcherCell": ("key", "null", "value", "ci_low", "ci_high", "suppressed", "secondary"),
    "Cell": ("key", "null", "value", "ci_low", "ci_high", "suppressed", "secondary"),
    "ResultResponse": ("query_id", "released_at", "columns", "rows", "report"),
    "ReleasedResult": ("query_id", "released_at", "result"),
    "ResearcherResult": ("columns", "rows", "report"),
    "Result": ("columns", "rows", "report"),
    "Output": ("query_id", "result"),
    "DryRunResponse": ("synthetic", "dataset", "cost", "accuracy", "columns", "rows", "report"),
}

# Query statuses, and those after which a query never changes.
STATUSES = (
    "submitted", "rejected", "approved", "cancelled", "running",
    "awaiting_output_check", "released", "withheld", "failed",
)
ENDED = ("released", "rejected", "withheld", "failed", "cancelled")
# The statuses in which a query waits for the site, not for a person.
AT_SITE = ("approved", "running")
