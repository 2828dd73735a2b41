#' Kaplan-Meier curve of a released survival table
#'
#' A survival table (the tre repository's docs/sql.md, "Survival") is
#' released as a group column of time bands, in order, and count columns
#' of deaths and of censorings per band. The bands are the last group
#' column; group columns before it are strata, one curve each
#' (\code{GROUP BY sex, years_band}), named in a first column
#' \code{stratum} (\code{"sex=female"}). \code{tre_km} downloads a released
#' one and computes the life-table Kaplan-Meier curve from it as
#' \code{tre query km} does: with \eqn{n_0} the sum of every band's deaths
#' and censorings, \eqn{n_j = n_0 - \sum_{i<j}(d_i + c_i)} at risk entering
#' band \eqn{j} and \eqn{S(t_j) = \prod_{i \le j}(1 - q_i)}, where
#' \eqn{q_j}, the probability of dying within band \eqn{j}, solves the life
#' table with a constant hazard within the band and censorings spread evenly
#' over it (the actuarial \eqn{d_j/(n_j - c_j/2)} is its first-order
#' approximation, which overstates survival where many die within a band).
#' The 95\% interval adds Greenwood's variance (with
#' \eqn{n'_j = d_j/q_j}) and the noise's (each released count's own interval
#' read as \eqn{\pm 1.96} standard deviations, carried through \eqn{S} by
#' its numerical derivative). It reads only released values:
#' post-processing, no privacy budget. \code{tre_kaplan_meier} does the same
#' for a table already decoded from the broker's JSON.
#'
#' @param client A \code{\link{tre_client}}.
#' @param id The query's id, or the query.
#' @param deaths,censored The names of the count columns.
#' @param result The table as decoded from the broker's JSON.
#' @return A data frame with columns (\code{stratum} first when the table
#'   has strata) \code{band}, \code{at_risk},
#'   \code{deaths}, \code{censored}, \code{survival}, \code{ci_low},
#'   \code{ci_high}. A table of another shape is an error saying what is
#'   expected; so is a suppressed band.
#' @examples
#' \dontrun{
#' km <- tre_km(alice, q)
#' plot(km$survival, type = "s", ylim = c(0, 1))
#' }
#' @export
tre_km <- function(client, id, deaths = "deaths", censored = "censored") {
  tre_kaplan_meier(.call(client, "result", id, list(format = "json")), deaths, censored)
}

#' @rdname tre_km
#' @export
tre_kaplan_meier <- function(result, deaths = "deaths", censored = "censored") {
  columns <- result[["columns"]]
  kinds <- vapply(columns, function(c) c[["kind"]], character(1))
  names <- vapply(columns, function(c) c[["name"]], character(1))
  groups <- which(kinds == "group")
  di <- which(names == deaths & kinds != "group")
  ci <- which(names == censored & kinds != "group")
  shape <- sprintf("a survival table has a group column of time bands, in order, as its last group column (any before it are strata, one curve each), and count columns \"%s\" and \"%s\" (docs/sql.md, Survival); this one has %s",
                   deaths, censored, paste0(names, " (", kinds, ")", collapse = ", "))
  counts <- c("count", "count_patients")
  if (!length(groups) || length(di) != 1 || length(ci) != 1 || !(kinds[di] %in% counts) || !(kinds[ci] %in% counts)) {
    stop("not a survival table: ", shape, call. = FALSE)
  }
  gi <- groups[length(groups)]
  strata <- groups[-length(groups)]
  # Each stratum's label and rows, strata in the table's order (an empty
  # label, no strata, cannot be a list name).
  labels <- character(0)
  by <- list()
  for (row in result[["rows"]]) {
    if (length(row) != length(columns) || identical(row[[gi]][["key"]], "(total)")) next
    keys <- vapply(strata, function(g) {
      k <- if (isTRUE(row[[g]][["null"]])) "(missing)" else row[[g]][["key"]]
      paste0(names[g], "=", k)
    }, character(1))
    st <- paste(keys, collapse = ", ")
    i <- match(st, labels)
    if (is.na(i)) {
      labels <- c(labels, st)
      i <- length(labels)
      by[[i]] <- list()
    }
    by[[i]] <- c(by[[i]], list(row))
  }
  if (!length(by)) stop("the survival table has no bands: ", shape, call. = FALSE)
  curves <- lapply(seq_along(labels), function(i) {
    st <- labels[i]
    km <- tryCatch(.km_stratum(by[[i]], gi, di, ci, names),
                   error = function(e) stop(if (nzchar(st)) paste0("stratum ", st, ": ") else "", conditionMessage(e), call. = FALSE))
    if (length(strata)) km <- cbind(data.frame(stratum = st, stringsAsFactors = FALSE), km)
    km
  })
  out <- do.call(rbind, curves)
  rownames(out) <- NULL
  out
}

# The curve of one stratum's rows: band column gi, deaths di, censorings ci.
.km_stratum <- function(rows, gi, di, ci, names) {
  z <- 1.959963984540054
  bands <- character(0)
  x <- numeric(0)
  sd <- numeric(0)
  for (row in rows) {
    band <- row[[gi]][["key"]]
    for (j in c(di, ci)) {
      cell <- row[[j]]
      if (is.null(cell[["value"]])) {
        stop(sprintf("band \"%s\": %s is suppressed, so the curve cannot be computed through it", band, names[j]), call. = FALSE)
      }
      x <- c(x, max(0, as.numeric(cell[["value"]])))
      s <- 0
      if (!is.null(cell[["ci_low"]]) && !is.null(cell[["ci_high"]])) s <- (cell[["ci_high"]] - cell[["ci_low"]]) / 2 / z
      sd <- c(sd, s)
    }
    bands <- c(bands, band)
  }
  d <- x[seq(1, length(x), 2)]
  c <- x[seq(2, length(x), 2)]
  at_risk <- sum(x) - c(0, cumsum(d + c))[seq_along(bands)]
  surv <- .km_survival(x)
  noise <- numeric(length(bands))
  for (k in seq_along(x)) {
    up <- x
    down <- x
    up[k] <- up[k] + 0.5
    down[k] <- max(0, down[k] - 0.5)
    slope <- (.km_survival(up) - .km_survival(down)) / (up[k] - down[k])
    noise <- noise + slope * slope * sd[k] * sd[k]
  }
  q <- mapply(.km_band_q, at_risk, d, c)
  eff <- ifelse(q > 0 & q < 1, d / q, 0)
  term <- ifelse(q > 0 & q < 1, d / (eff * (eff - d)), 0)
  half <- z * sqrt(surv^2 * cumsum(term) + noise)
  data.frame(band = bands, at_risk = at_risk, deaths = d, censored = c, survival = surv,
             ci_low = pmax(0, surv - half), ci_high = pmin(1, surv + half), stringsAsFactors = FALSE)
}

# The life-table survival at the end of each band, deaths x[2j-1] and
# censorings x[2j].
.km_survival <- function(x) {
  d <- x[seq(1, length(x), 2)]
  c <- x[seq(2, length(x), 2)]
  at_risk <- sum(x) - c(0, cumsum(d + c))[seq_along(d)]
  cumprod(1 - mapply(.km_band_q, at_risk, d, c))
}

# The probability of dying within a band from n at risk, d deaths and c
# censorings in it, with a constant hazard within the band and censorings
# spread evenly over it (api.bandDeathProb in the Go code), by bisection.
.km_band_q <- function(n, d, c) {
  if (n <= 0 || d <= 0) return(0)
  a <- min(1, d / n)
  b <- min(1, c / n)
  f <- function(q) {
    lam <- -log1p(-q)
    q - b * (1 - (1 - q) * (1 + lam)) / q - a
  }
  lo <- 0
  hi <- 1
  for (i in 1:100) {
    mid <- (lo + hi) / 2
    if (mid == lo || mid == hi) break
    if (f(mid) < 0) lo <- mid else hi <- mid
  }
  (lo + hi) / 2
}
