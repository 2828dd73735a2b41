#' Review: approve or reject submitted queries
#'
#' For reviewers (\code{tre_client(role = "reviewer")}).
#' \code{tre_review_queue} lists the submitted queries, oldest first, with
#' their project's remaining budget. \code{tre_approve} approves a query,
#' reserving its cost in the project's budget (a reviewer who did not
#' submit it; \code{tre_budget} when it would overspend).
#' \code{tre_reject} rejects it, saying why.
#'
#' @param client A \code{\link{tre_client}} in the reviewer role.
#' @param id The query's id, or the query.
#' @param comment A note for the record.
#' @param reason Why the query is rejected.
#' @return \code{tre_review_queue}: a data frame as
#'   \code{\link{tre_queries}}', with \code{epsilon_remaining}, the
#'   project's. The others: the query, a list, invisibly.
#' @examples
#' \dontrun{
#' bob <- tre_client(role = "reviewer")
#' tre_approve(bob, q, comment = "Aggregate by region only")
#' tre_wait(bob, q)   # until the site has run it
#' }
#' @export
tre_review_queue <- function(client) {
  items <- .all(client, "review_queue")
  df <- .query_frame(items)
  df[["epsilon_remaining"]] <- vapply(items, function(q) {
    as.numeric(q[["project_budget"]][["epsilon_remaining"]] %||% NA)
  }, numeric(1))
  df
}

#' @rdname tre_review_queue
#' @export
tre_approve <- function(client, id, comment = "") {
  invisible(.call(client, "approve", id, body = list(comment = comment)))
}

#' @rdname tre_review_queue
#' @export
tre_reject <- function(client, id, reason) {
  invisible(.call(client, "reject", id, body = list(reason = reason)))
}

#' Output check: release or withhold a protected result
#'
#' For output checkers (\code{tre_client(role = "output_checker")}).
#' \code{tre_output_queue} lists the queries whose output awaits a check.
#' \code{tre_output} returns the output as the checker checks it: the
#' protected result with the full disclosure report, or the failure
#' notice of a failed run (for a researcher, once released, the released
#' result); \code{tre_table(tre_output(...)$result)} makes its table.
#' \code{tre_release} releases it to the researchers (a checker who
#' neither submitted nor approved the query); \code{tre_withhold}
#' withholds it, saying why.
#'
#' @param client A \code{\link{tre_client}} in the output checker role.
#' @param id The query's id, or the query.
#' @param comment A note for the record.
#' @param reason Why the output is withheld.
#' @return \code{tre_output_queue}: a data frame as
#'   \code{\link{tre_queries}}'. \code{tre_output}: a list as the broker
#'   sends it. The others: the query, a list, invisibly.
#' @export
tre_output_queue <- function(client) {
  .query_frame(.all(client, "output_queue"))
}

#' @rdname tre_output_queue
#' @export
tre_output <- function(client, id) {
  .call(client, "output", id)
}

#' @rdname tre_output_queue
#' @export
tre_release <- function(client, id, comment = "") {
  invisible(.call(client, "release", id, body = list(comment = comment)))
}

#' @rdname tre_output_queue
#' @export
tre_withhold <- function(client, id, reason) {
  invisible(.call(client, "withhold", id, body = list(reason = reason)))
}
