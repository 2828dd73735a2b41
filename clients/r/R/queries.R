#' Datasets and projects
#'
#' \code{tre_datasets} returns the catalogs of the datasets a query may use:
#' tables, columns with their roles, bounds, value domains and example
#' codes, and the privacy policy every query gets (a list, one element per
#' dataset, as the broker sends it). \code{tre_projects} returns the
#' projects you may see, one row each, with their privacy budgets;
#' \code{tre_project} one project as a list.
#'
#' @param client A \code{\link{tre_client}}.
#' @param project_id A project's id.
#' @return \code{tre_datasets}: a list of catalogs. \code{tre_projects}: a
#'   data frame with columns \code{id}, \code{title}, \code{organisation},
#'   \code{status}, \code{expires_at}, \code{epsilon_budget},
#'   \code{epsilon_spent}, \code{epsilon_reserved} and
#'   \code{epsilon_remaining}. \code{tre_project}: a list.
#' @export
tre_datasets <- function(client) {
  .all(client, "datasets")
}

#' @rdname tre_datasets
#' @export
tre_projects <- function(client) {
  items <- .all(client, "projects")
  df <- .frame(items, c("id", "title", "organisation", "status", "expires_at", "epsilon_budget"),
               c("numeric", "character", "character", "character", "character", "numeric"))
  budgets <- lapply(items, function(p) p[["budget"]])
  for (f in c("epsilon_spent", "epsilon_reserved", "epsilon_remaining")) {
    df[[f]] <- as.numeric(vapply(budgets, function(b) as.numeric(b[[f]] %||% NA), numeric(1)))
  }
  df
}

#' @rdname tre_datasets
#' @export
tre_project <- function(client, project_id) {
  .call(client, "project", project_id)
}

.query_body <- function(project_id, sql, purpose, epsilon, dataset) {
  if (length(project_id) != 1 || !is.numeric(project_id) || is.na(project_id) || project_id <= 0) {
    stop("project_id must be a positive whole number", call. = FALSE)
  }
  if (length(sql) != 1 || !is.character(sql)) stop("sql must be one string", call. = FALSE)
  list(project_id = project_id, sql = sql, purpose = purpose, epsilon = epsilon, dataset = dataset)
}

#' Check, dry-run and submit a query
#'
#' \code{tre_check} validates \code{sql} for the project as a submission
#' would, storing and running nothing, and says what it would cost and how
#' accurate it would be. \code{tre_dry_run} runs it on the broker's
#' synthetic data (never patient records; no budget) and returns the
#' protected table as a researcher would receive it. \code{tre_submit}
#' submits it for review. A refused query signals a \code{tre_refused}
#' condition whose message names the construct and its position.
#'
#' @param client A \code{\link{tre_client}}.
#' @param project_id The project's id.
#' @param sql One aggregate \code{SELECT} over the catalog's tables.
#' @param purpose Why the project needs this query: the reviewer judges
#'   the query by it. Required to submit.
#' @param epsilon The query's privacy cost; \code{NULL}: the dataset's default.
#' @param dataset The dataset, when the project has several.
#' @return \code{tre_check}: a list with \code{dataset}, \code{cost}
#'   (\code{epsilon}, \code{delta}), \code{accuracy} and
#'   \code{rewritten_sql}. \code{tre_dry_run}: a data frame as
#'   \code{\link{tre_result}}'s, with attributes \code{synthetic},
#'   \code{dataset}, \code{cost}, \code{accuracy} and \code{report}.
#'   \code{tre_submit}: the query, a list with its \code{id},
#'   \code{status}, \code{cost}, \code{accuracy} and \code{risk_flags}.
#' @examples
#' \dontrun{
#' sql <- "SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"
#' tre_check(alice, 1, sql)$cost
#' q <- tre_submit(alice, 1, sql, purpose = "Registered patients by sex", epsilon = 0.5)
#' }
#' @export
tre_check <- function(client, project_id, sql, epsilon = NULL, dataset = NULL) {
  .call(client, "check", body = .query_body(project_id, sql, NULL, epsilon, dataset))
}

#' @rdname tre_check
#' @export
tre_dry_run <- function(client, project_id, sql, epsilon = NULL, dataset = NULL) {
  tre_table(.call(client, "dry_run", body = .query_body(project_id, sql, NULL, epsilon, dataset)))
}

#' @rdname tre_check
#' @export
tre_submit <- function(client, project_id, sql, purpose, epsilon = NULL, dataset = NULL) {
  .call(client, "submit", body = .query_body(project_id, sql, purpose, epsilon, dataset))
}

#' A query, its status and history; your queries
#'
#' \code{tre_get} returns the query as you may see it (a list: status,
#' history, cost, decisions). A researcher sees changes made by others
#' from the next multiple of the broker's \code{researcher_time_granularity}
#' on. \code{tre_status} is its status, \code{tre_history} its status
#' changes. \code{tre_queries} lists your queries (a researcher's: those of
#' their projects; staff: all). \code{tre_cancel} cancels your query until
#' a reviewer has decided on it.
#'
#' @param client A \code{\link{tre_client}}.
#' @param id The query's id, or the query (as \code{tre_submit} returns it).
#' @param status Only queries in this status.
#' @param project_id Only queries of this project.
#' @param rewritten_sql \code{TRUE}: \code{tre_get}'s query also has
#'   \code{rewritten_sql}, the SQL the sandbox runs (contribution-bounded,
#'   over the opt-out-filtered views; about 10 kB, left out otherwise).
#' @return \code{tre_get}: the query, a list; \code{tre_cancel} too,
#'   invisibly.
#'   \code{tre_status}: a string. \code{tre_history}: a data frame with
#'   columns \code{from}, \code{to}, \code{actor}, \code{comment},
#'   \code{at}, oldest first. \code{tre_queries}: a data frame with columns
#'   \code{id}, \code{project_id}, \code{status}, \code{purpose},
#'   \code{submitted_by}, \code{submitted_at}, \code{updated_at} and
#'   \code{epsilon}.
#' @export
tre_get <- function(client, id, rewritten_sql = FALSE) {
  .call(client, "query", id, params = list(include = if (isTRUE(rewritten_sql)) "rewritten_sql"))
}

#' @rdname tre_get
#' @export
tre_status <- function(client, id) {
  tre_get(client, id)[["status"]]
}

#' @rdname tre_get
#' @export
tre_history <- function(client, id) {
  .frame(tre_get(client, id)[["history"]], c("from", "to", "actor", "comment", "at"), rep("character", 5))
}

#' @rdname tre_get
#' @export
tre_queries <- function(client, status = NULL, project_id = NULL) {
  if (!is.null(status) && !(status %in% .tre_statuses)) {
    stop(sprintf("status %s: one of %s", status, paste(.tre_statuses, collapse = ", ")), call. = FALSE)
  }
  .query_frame(.all(client, "queries", list(status = status, project_id = project_id)))
}

.query_frame <- function(items) {
  df <- .frame(items, c("id", "project_id", "status", "purpose", "submitted_by", "submitted_at", "updated_at"),
               c("numeric", "numeric", "character", "character", "character", "character", "character"))
  df[["epsilon"]] <- vapply(items, function(q) as.numeric(q[["cost"]][["epsilon"]] %||% NA), numeric(1))
  df
}

#' @rdname tre_get
#' @export
tre_cancel <- function(client, id) {
  invisible(.call(client, "cancel", id))
}

#' Wait for a query's next step
#'
#' Waits while the query is with the site (approved or running) and
#' returns it once it awaits a person (a reviewer or an output checker) or
#' has ended; with \code{final = TRUE}, until it has ended (released,
#' rejected, withheld, failed or cancelled). A researcher sees each change
#' from the next multiple of the broker's time granularity on.
#'
#' @param client A \code{\link{tre_client}}.
#' @param id The query's id, or the query.
#' @param timeout Seconds to wait before giving up with a
#'   \code{tre_timeout} condition (its \code{query} is the query as last
#'   seen).
#' @param final Wait until the query has ended, not only for the next person.
#' @param progress \code{TRUE}: a message at each change of status (and
#'   every 30 s that it is still waiting); \code{FALSE}: none; a function:
#'   called with the query at each change.
#' @param poll Seconds between two looks at the query.
#' @return The query, a list, invisibly.
#' @examples
#' \dontrun{
#' q <- tre_wait(alice, q, final = TRUE)
#' if (q$status == "released") df <- tre_result(alice, q)
#' }
#' @export
tre_wait <- function(client, id, timeout = 900, final = FALSE, progress = TRUE, poll = 2) {
  id <- .id(id)
  done <- if (final) function(s) s %in% .tre_ended else function(s) !(s %in% .tre_at_site)
  start <- Sys.time()
  elapsed <- function() as.numeric(difftime(Sys.time(), start, units = "secs"))
  last <- NULL
  noted <- 0
  repeat {
    q <- tre_get(client, id)
    status <- q[["status"]]
    if (!identical(status, last)) {
      if (is.function(progress)) {
        progress(q)
      } else if (isTRUE(progress)) {
        message(sprintf("query %s: %s (%.0f s)", id, tre_describe_status(status), elapsed()))
      }
      last <- status
      noted <- elapsed()
    } else if (isTRUE(progress) && elapsed() - noted >= 30) {
      message(sprintf("query %s: still %s (%.0f s)", id, tre_describe_status(status), elapsed()))
      noted <- elapsed()
    }
    if (done(status)) return(invisible(q))
    left <- timeout - elapsed()
    if (left <= 0) {
      .abort("tre_timeout", sprintf("query %s is still %s after %g s", id, status, timeout), query = q, timeout = timeout)
    }
    Sys.sleep(max(min(poll, left), 0))
  }
}

#' What a status means to someone waiting on it
#'
#' @param status A query status.
#' @return A phrase, as \code{tre_wait} and \code{tre ... --wait} print it.
#' @export
tre_describe_status <- function(status) {
  switch(status,
         submitted = "submitted, waiting for a reviewer",
         approved = "approved, waiting for the site agent to start it",
         running = "running at the site",
         awaiting_output_check = "awaiting_output_check, waiting for an output checker",
         status)
}

#' The released table
#'
#' \code{tre_result} returns a released query's table as a data frame laid
#' out as the CSV download: one column per group key (character,
#' \code{NA} for SQL NULL), then for each aggregate \code{NAME} the columns
#' \code{NAME}, \code{NAME_ci_low}, \code{NAME_ci_high} (the 95\% interval
#' of the noise) and \code{NAME_flag} (\code{"suppressed"},
#' \code{"secondary_suppressed"}, or \code{""} for a released value). A
#' suppressed cell's value and interval are \code{NA}. Values are the JSON
#' result's, unrounded. Until the query is released to you, signals
#' \code{tre_forbidden}. \code{tre_result_csv} returns the CSV file
#' itself (values rounded to the precision the noise leaves).
#'
#' @param client A \code{\link{tre_client}}.
#' @param id The query's id, or the query.
#' @return \code{tre_result}: a data frame with attributes
#'   \code{query_id}, \code{released_at} and \code{report} (the
#'   researcher's part of the disclosure report). \code{tre_result_csv}:
#'   a string.
#' @examples
#' \dontrun{
#' df <- tre_result(alice, q)
#' df[df$n_flag == "", c("sex", "n", "n_ci_low", "n_ci_high")]
#' attr(df, "report")$epsilon
#' }
#' @export
tre_result <- function(client, id) {
  tre_table(.call(client, "result", id, list(format = "json")))
}

#' @rdname tre_result
#' @export
tre_result_csv <- function(client, id) {
  .call(client, "result_csv", id, list(format = "csv"))
}
