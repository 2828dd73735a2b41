# What treclient relies on in the broker's HTTP API.
#
# Every request the package makes goes through an entry of .tre_operations,
# and the package reads no response field that .tre_fields does not list
# (wire fields are read with x[["field"]]). tests/testthat/test-wire.R
# checks both against the broker's OpenAPI document (api/openapi.json,
# served at /api/v1/openapi.json), and that the package's functions read no
# undeclared field.

.op <- function(method, path, params = character(), request = NULL, response) {
  list(method = method, path = path, params = params, request = request, response = response)
}

.page <- c("limit", "offset")

# One API call each: method, path ({id}: the numeric id), the query
# parameters sent, the request body's schema (NULL: no body), the schemas
# of the success response ("text/csv" for CSV).
.tre_operations <- list(
  datasets = .op("GET", "/api/v1/datasets", .page, response = "CatalogList"),
  projects = .op("GET", "/api/v1/projects", .page, response = "ProjectList"),
  project = .op("GET", "/api/v1/projects/{id}", response = "Project"),
  check = .op("POST", "/api/v1/queries/check", request = "QueryRequest", response = "CheckResponse"),
  dry_run = .op("POST", "/api/v1/queries/dry-run", request = "QueryRequest", response = "DryRunResponse"),
  submit = .op("POST", "/api/v1/queries", request = "QueryRequest", response = "Query"),
  queries = .op("GET", "/api/v1/queries", c(.page, "status", "project_id"), response = "QueryList"),
  query = .op("GET", "/api/v1/queries/{id}", "include", response = "Query"),
  cancel = .op("POST", "/api/v1/queries/{id}/cancel", response = "Query"),
  result = .op("GET", "/api/v1/queries/{id}/result", "format", response = "ResultResponse"),
  result_csv = .op("GET", "/api/v1/queries/{id}/result", "format", response = "text/csv"),
  review_queue = .op("GET", "/api/v1/review/queue", .page, response = "QueueItemList"),
  approve = .op("POST", "/api/v1/queries/{id}/approve", request = "CommentRequest", response = "Query"),
  reject = .op("POST", "/api/v1/queries/{id}/reject", request = "ReasonRequest", response = "Query"),
  output_queue = .op("GET", "/api/v1/outputs/queue", .page, response = "QueryList"),
  output = .op("GET", "/api/v1/queries/{id}/output", response = c("Output", "ReleasedResult")),
  release = .op("POST", "/api/v1/queries/{id}/release", request = "CommentRequest", response = "Query"),
  withhold = .op("POST", "/api/v1/queries/{id}/withhold", request = "ReasonRequest", response = "Query")
)

# The request body fields sent, by schema.
.tre_requests <- list(
  QueryRequest = c("project_id", "dataset", "sql", "purpose", "epsilon"),
  CommentRequest = "comment",
  ReasonRequest = "reason"
)

.cell_fields <- c("key", "null", "value", "ci_low", "ci_high", "suppressed", "secondary")
.query_fields <- c("id", "project_id", "status", "purpose", "submitted_by", "submitted_at", "updated_at", "cost", "history")

# The response fields read, by schema ("Error.error": the object in
# Error's error property). Everything else is passed on as the broker sent
# it.
.tre_fields <- list(
  "Error" = "error",
  "Error.error" = c("code", "message"),
  "CatalogList" = c("items", "total"),
  "ProjectList" = c("items", "total"),
  "QueryList" = c("items", "total"),
  "QueueItemList" = c("items", "total"),
  "Query" = .query_fields,
  "QueueItem" = c(.query_fields, "project_budget"),
  "Cost" = c("epsilon", "delta"),
  "Budget" = c("epsilon_spent", "epsilon_reserved", "epsilon_remaining"),
  "Project" = c("id", "title", "organisation", "status", "epsilon_budget", "expires_at", "budget"),
  "Event" = c("from", "to", "actor", "comment", "at"),
  "Column" = c("name", "kind"),
  "ResearcherCell" = .cell_fields,
  "Cell" = .cell_fields,
  "ResultResponse" = c("query_id", "released_at", "columns", "rows", "report"),
  "ReleasedResult" = c("query_id", "released_at", "result"),
  "ResearcherResult" = c("columns", "rows", "report"),
  "Result" = c("columns", "rows", "report"),
  "Output" = c("query_id", "result"),
  "DryRunResponse" = c("synthetic", "dataset", "cost", "accuracy", "columns", "rows", "report")
)

# Query statuses; those after which a query never changes; those in which
# it waits for the site, not for a person.
.tre_statuses <- c(
  "submitted", "rejected", "approved", "cancelled", "running",
  "awaiting_output_check", "released", "withheld", "failed"
)
.tre_ended <- c("released", "rejected", "withheld", "failed", "cancelled")
.tre_at_site <- c("approved", "running")

# The API's error codes (the Error schema's enum): each is a condition
# class tre_<code>.
.tre_error_codes <- c(
  "invalid", "refused", "unauthorized", "forbidden", "not_found",
  "conflict", "budget", "rate_limited", "unavailable", "internal"
)
