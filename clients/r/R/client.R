#' treclient: the tre query broker from R
#'
#' Submit aggregate SQL questions to a tre broker, follow them through
#' review, the protected run and the output check, and read released
#' tables as data frames. Reviewers and output checkers use the same
#' package with their own role. See \code{\link{tre_client}} to connect and
#' \code{docs/clients.md} in the tre repository for the whole reference.
#'
#' @keywords internal
"_PACKAGE"

.roles <- c("researcher", "reviewer", "output_checker", "admin")
.default_broker <- "http://127.0.0.1:8080"
.demo_tokens <- file.path("tre-demo", "tokens.env")

#' Connect to a tre broker
#'
#' A client is one person, in one role, at one broker. Where arguments are
#' not given, the broker's address and the token come from the same places
#' as for the \code{tre} command line: the token is \code{token}, else the
#' file \code{token_file} (a bare token, or a \code{tokens.env}), else the
#' environment variable of the role (\code{TRE_TOKEN_RESEARCHER},
#' \code{TRE_TOKEN_REVIEWER}, \code{TRE_TOKEN_OUTPUT_CHECKER},
#' \code{TRE_TOKEN_ADMIN}: what \code{tre demo} writes to
#' \code{tre-demo/tokens.env}), else \code{TRE_TOKEN}, else
#' \code{tre-demo/tokens.env} in the working directory. The address is
#' \code{base_url}, else \code{TRE_BROKER}, else the \code{TRE_BROKER} of
#' the tokens file read, else \code{http://127.0.0.1:8080}.
#'
#' Every call the broker refuses signals a condition of class
#' \code{tre_<code>} (the API's error code: \code{tre_refused},
#' \code{tre_forbidden}, \code{tre_not_found}, ...), \code{tre_api_error}
#' and \code{tre_error}, carrying \code{code}, \code{status} (HTTP) and
#' \code{api_message}; the message of a refused query names the construct
#' and its position.
#'
#' @param base_url The broker's address, such as \code{"http://127.0.0.1:8080"}.
#' @param token The bearer token.
#' @param role Whose token to look for: \code{"researcher"} (the default),
#'   \code{"reviewer"}, \code{"output_checker"} or \code{"admin"}.
#' @param token_file A file holding the token, or a \code{tokens.env}.
#' @param timeout Seconds to wait for one answer of the broker.
#' @return A \code{tre_client}, for the other \code{tre_} functions.
#' @examples
#' \dontrun{
#' alice <- tre_client()                       # TRE_BROKER, TRE_TOKEN_RESEARCHER
#' bob <- tre_client(role = "reviewer")
#' }
#' @export
tre_client <- function(base_url = NULL, token = NULL, role = "researcher", token_file = NULL, timeout = 60) {
  role <- match.arg(role, .roles)
  found <- .resolve(base_url, token, role, token_file, Sys.getenv(), getwd())
  structure(list(base_url = found$base_url, token = found$token, role = role, timeout = timeout),
            class = "tre_client")
}

#' @export
print.tre_client <- function(x, ...) {
  cat("<tre_client ", x$base_url, " as ", x$role, ">\n", sep = "")
  invisible(x)
}

.token_var <- function(role) paste0("TRE_TOKEN_", toupper(role))

# .parse_env_file reads the KEY=VALUE lines of a tokens.env, or returns
# NULL when the text is not such a file (a bare token).
.parse_env_file <- function(lines) {
  lines <- trimws(lines)
  lines <- lines[nzchar(lines) & !startsWith(lines, "#")]
  lines <- sub("^export ", "", lines)
  if (!length(lines) || !all(grepl("^[A-Za-z_][A-Za-z0-9_]*=", lines))) {
    return(NULL)
  }
  keys <- sub("=.*$", "", lines)
  values <- trimws(sub("^[^=]*=", "", lines))
  quoted <- nchar(values) >= 2 & substr(values, 1, 1) %in% c("'", "\"") &
    substr(values, 1, 1) == substr(values, nchar(values), nchar(values))
  values[quoted] <- substr(values[quoted], 2, nchar(values[quoted]) - 1)
  stats::setNames(as.list(values), keys)
}

.read_lines <- function(path) {
  tryCatch(readLines(path, warn = FALSE),
           error = function(e) .abort("tre_error", sprintf("read token file %s: %s", path, conditionMessage(e))),
           warning = function(w) .abort("tre_error", sprintf("read token file %s: %s", path, conditionMessage(w))))
}

.nonempty <- function(x) if (is.null(x) || is.na(x) || !nzchar(trimws(x))) NULL else trimws(x)

.resolve <- function(base_url, token, role, token_file, env, dir) {
  var <- .token_var(role)
  getenv <- function(name) if (name %in% names(env)) .nonempty(env[[name]]) else NULL
  file_env <- NULL
  if (is.null(token) && !is.null(token_file)) {
    lines <- .read_lines(token_file)
    file_env <- .parse_env_file(lines)
    if (is.null(file_env)) {
      token <- .nonempty(paste(lines, collapse = ""))
    } else {
      token <- .nonempty(file_env[[var]]) %||% .nonempty(file_env[["TRE_TOKEN"]])
      if (is.null(token)) {
        .abort("tre_error", sprintf("token file %s sets neither %s nor TRE_TOKEN", token_file, var))
      }
    }
  }
  if (is.null(token)) {
    token <- getenv(var) %||% getenv("TRE_TOKEN")
  }
  if (is.null(token)) {
    demo <- file.path(dir, .demo_tokens)
    if (file.exists(demo)) {
      file_env <- .parse_env_file(.read_lines(demo))
      token <- .nonempty(file_env[[var]])
    }
  }
  if (is.null(token)) {
    .abort("tre_error", sprintf(
      "no token: pass token or token_file, or set %s or TRE_TOKEN (tre demo writes them to %s)", var, .demo_tokens))
  }
  base_url <- .nonempty(base_url) %||% getenv("TRE_BROKER") %||% .nonempty(file_env[["TRE_BROKER"]]) %||% .default_broker
  base_url <- sub("/+$", "", base_url)
  if (!grepl("^https?://", base_url)) {
    stop(sprintf("base_url %s must be an http:// or https:// URL", base_url), call. = FALSE)
  }
  list(base_url = base_url, token = trimws(token))
}

`%||%` <- function(a, b) if (is.null(a)) b else a

# .abort signals a tre condition of the given classes with extra fields.
.abort <- function(class, message, ...) {
  stop(structure(class = unique(c(class, "tre_error", "error", "condition")),
                 list(message = message, call = NULL, ...)))
}

.api_error <- function(status, code, message, retry_after = NULL) {
  classes <- c(if (!is.null(code) && code %in% .tre_error_codes) paste0("tre_", code), "tre_api_error")
  text <- sprintf("%s (HTTP %d%s)", message, status, if (is.null(code)) "" else paste0(", ", code))
  .abort(classes, text, status = status, code = code, api_message = message, retry_after = retry_after)
}

# .id is an id as a positive whole number: the id, or a query (a list with
# its id).
.id <- function(x) {
  if (is.list(x)) x <- x[["id"]]
  if (length(x) != 1 || !is.numeric(x) || is.na(x) || x <= 0 || x != round(x)) {
    stop("an id must be a positive whole number, or a query", call. = FALSE)
  }
  x
}

# .call sends the request of .tre_operations[[name]] and returns its
# decoded JSON answer (or text, for CSV).
.call <- function(client, name, id = NULL, params = list(), body = NULL) {
  op <- .tre_operations[[name]]
  path <- op$path
  if (grepl("{id}", path, fixed = TRUE)) {
    path <- sub("{id}", format(.id(id), scientific = FALSE), path, fixed = TRUE)
  }
  params <- Filter(Negate(is.null), params)
  unknown <- setdiff(names(params), op$params)
  if (length(unknown)) stop(sprintf("%s takes no parameter %s", name, paste(unknown, collapse = ", ")), call. = FALSE)
  csv <- identical(op$response, "text/csv")
  args <- list(
    verb = op$method,
    url = paste0(client$base_url, path),
    httr::add_headers(Authorization = paste("Bearer", client$token),
                      Accept = if (csv) "text/csv" else "application/json"),
    httr::user_agent("tre-client-r"),
    httr::timeout(client$timeout),
    # The broker never redirects an API call; a redirect must not carry
    # the token elsewhere.
    httr::config(followlocation = 0L)
  )
  if (length(params)) args$query <- params
  if (!is.null(body)) {
    unknown <- setdiff(names(body), .tre_requests[[op$request]])
    if (length(unknown)) stop(sprintf("%s sends no field %s", name, paste(unknown, collapse = ", ")), call. = FALSE)
    body <- Filter(Negate(is.null), body)
    args$body <- jsonlite::toJSON(body, auto_unbox = TRUE, digits = NA, null = "null")
    args <- c(args, list(httr::content_type_json()))
  }
  resp <- tryCatch(do.call(httr::VERB, args), error = function(e) {
    .abort("tre_unreachable", sprintf("cannot reach the broker at %s: %s", client$base_url, conditionMessage(e)))
  })
  status <- httr::status_code(resp)
  text <- httr::content(resp, as = "text", encoding = "UTF-8")
  if (status >= 300 && status < 400) {
    .api_error(status, NULL, sprintf("the broker at %s answered with a redirect to %s: use that address",
                                     client$base_url, httr::headers(resp)[["location"]] %||% "?"))
  }
  if (status >= 400) {
    retry <- suppressWarnings(as.integer(httr::headers(resp)[["retry-after"]] %||% NA))
    err <- tryCatch(jsonlite::fromJSON(text, simplifyVector = FALSE)[["error"]], error = function(e) NULL)
    if (!is.list(err) || !is.character(err[["code"]]) || !is.character(err[["message"]])) {
      .api_error(status, NULL, sprintf("the broker answered HTTP %d without an error body", status),
                 if (is.na(retry)) NULL else retry)
    }
    .api_error(status, err[["code"]], err[["message"]], if (is.na(retry)) NULL else retry)
  }
  if (csv) return(text)
  if (is.na(text) || !nzchar(text)) return(NULL)
  jsonlite::fromJSON(text, simplifyVector = FALSE)
}

# .all returns every item of a paged list.
.all <- function(client, name, params = list()) {
  items <- list()
  repeat {
    page <- .call(client, name, params = c(params, list(limit = 500, offset = length(items))))
    got <- page[["items"]]
    items <- c(items, got)
    if (!length(got) || length(items) >= page[["total"]]) return(items)
  }
}

# .frame makes a data frame of list items, one row each, with the given
# fields as columns (NA where an item lacks one).
.frame <- function(items, fields, types) {
  cols <- lapply(seq_along(fields), function(i) {
    f <- fields[[i]]
    vals <- lapply(items, function(x) {
      v <- x[[f]]
      if (is.null(v)) NA else v
    })
    switch(types[[i]],
           integer = as.numeric(unlist(vals)),
           numeric = as.numeric(unlist(vals)),
           as.character(unlist(vals)))
  })
  names(cols) <- fields
  if (!length(items)) cols <- lapply(cols, function(x) x[0])
  as.data.frame(cols, stringsAsFactors = FALSE)
}
