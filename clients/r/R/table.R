# The attributes a table carries besides its cells, when the answer has
# them: the query, when it was released (as researchers see it), the
# researcher's part of the disclosure report, and for a dry run that it is
# synthetic, what it is (run: "synthetic", or "synthetic_single_site" — one
# site's answer — over a dataset several sites hold, with federation), its
# dataset, cost and accuracy.
.table_attrs <- c("query_id", "released_at", "report", "synthetic", "run", "federation", "dataset", "cost", "accuracy")

#' A protected table as a data frame
#'
#' Lays out a table as the broker sends it (a list with \code{columns},
#' \code{rows} and \code{report}: a released result, a dry run, or the
#' \code{result} of \code{\link{tre_output}}) as \code{\link{tre_result}}
#' describes.
#'
#' @param result The table as decoded from the broker's JSON.
#' @return A data frame, with the answer's \code{query_id},
#'   \code{released_at}, \code{report}, \code{synthetic}, \code{run},
#'   \code{federation}, \code{dataset}, \code{cost} and \code{accuracy} as
#'   attributes where it has them (a dry run's \code{run} is
#'   \code{"synthetic_single_site"} over a dataset several sites hold: one
#'   site's answer; \code{federation} then gives the sites and costs).
#' @export
tre_table <- function(result) {
  columns <- result[["columns"]]
  rows <- result[["rows"]]
  cell <- function(row, i) if (i <= length(row)) row[[i]] else list()
  num <- function(x) if (is.null(x)) NA_real_ else as.numeric(x)
  out <- list()
  for (i in seq_along(columns)) {
    name <- columns[[i]][["name"]]
    cells <- lapply(rows, cell, i = i)
    if (identical(columns[[i]][["kind"]], "group")) {
      out[[name]] <- vapply(cells, function(c) {
        if (isTRUE(c[["null"]]) || is.null(c[["key"]])) NA_character_ else c[["key"]]
      }, character(1))
      next
    }
    flag <- vapply(cells, tre_flag, character(1))
    released <- flag == ""
    pick <- function(f) {
      v <- vapply(cells, function(c) num(c[[f]]), numeric(1))
      v[!released] <- NA_real_
      v
    }
    out[[name]] <- pick("value")
    out[[paste0(name, "_ci_low")]] <- pick("ci_low")
    out[[paste0(name, "_ci_high")]] <- pick("ci_high")
    out[[paste0(name, "_flag")]] <- flag
  }
  df <- as.data.frame(out, stringsAsFactors = FALSE, check.names = FALSE)
  if (!length(out)) df <- data.frame()
  for (a in intersect(.table_attrs, names(result))) {
    attr(df, a) <- result[[a]]
  }
  df
}

#' A cell's suppression mark
#'
#' @param cell A cell as the broker sends it (a list).
#' @return \code{"secondary_suppressed"}, \code{"suppressed"} or \code{""}.
#' @export
tre_flag <- function(cell) {
  if (isTRUE(cell[["secondary"]])) return("secondary_suppressed")
  if (isTRUE(cell[["suppressed"]])) return("suppressed")
  ""
}
