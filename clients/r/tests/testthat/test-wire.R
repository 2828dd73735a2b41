# The package against the broker's OpenAPI document: every operation and
# field declared in R/wire.R must be the document's, and the package's
# functions must read no wire field they do not declare. The document is
# TRE_OPENAPI, the repository's api/openapi.json, or the live broker's.

load_document <- function() {
  path <- Sys.getenv("TRE_OPENAPI")
  if (!nzchar(path)) {
    repo <- test_path("..", "..", "..", "..", "api", "openapi.json")
    if (file.exists(repo)) path <- repo
  }
  if (nzchar(path)) return(jsonlite::fromJSON(path, simplifyVector = FALSE))
  broker <- Sys.getenv("TRE_BROKER")
  if (nzchar(broker)) {
    return(jsonlite::fromJSON(httr::content(httr::GET(paste0(sub("/+$", "", broker), "/api/v1/openapi.json")),
                                            as = "text", encoding = "UTF-8"), simplifyVector = FALSE))
  }
  NULL
}

doc <- load_document()
schemas <- doc$components$schemas

resolve <- function(s) {
  while (!is.null(s[["$ref"]])) s <- schemas[[sub(".*/", "", s[["$ref"]])]]
  s
}

properties <- function(s) {
  s <- resolve(s)
  props <- s$properties
  for (part in s$allOf) props <- c(props, properties(part))
  props
}

schema <- function(dotted) {
  parts <- strsplit(dotted, ".", fixed = TRUE)[[1]]
  s <- schemas[[parts[1]]]
  for (p in parts[-1]) s <- properties(s)[[p]]
  s
}

refs <- function(s) {
  if (!is.null(s[["$ref"]])) return(sub(".*/", "", s[["$ref"]]))
  unlist(lapply(s$oneOf, refs))
}

skip_without_document <- function() {
  if (is.null(doc)) skip("no OpenAPI document: set TRE_OPENAPI or TRE_BROKER, or run from the tre repository")
}

test_that("every operation is the document's", {
  skip_without_document()
  for (name in names(.tre_operations)) {
    op <- .tre_operations[[name]]
    doc_op <- doc$paths[[op$path]][[tolower(op$method)]]
    expect(!is.null(doc_op), sprintf("%s: %s %s is not in the document", name, op$method, op$path))
    if (is.null(doc_op)) next
    params <- vapply(Filter(function(p) p$`in` == "query", doc_op$parameters), function(p) p$name, "")
    expect(all(op$params %in% params), sprintf("%s: query parameters %s not in the document",
                                                name, paste(setdiff(op$params, params), collapse = ", ")))
    body <- doc_op$requestBody
    if (is.null(op$request)) {
      expect(!isTRUE(body$required), sprintf("%s: the document requires a body", name))
    } else {
      expect_equal(refs(body$content$`application/json`$schema), op$request, label = name)
    }
    ok <- doc_op$responses[startsWith(names(doc_op$responses), "2")]
    expect_length(ok, 1)
    if (identical(op$response, "text/csv")) {
      expect(!is.null(ok[[1]]$content$`text/csv`), sprintf("%s: no text/csv answer", name))
    } else {
      expect_setequal(refs(ok[[1]]$content$`application/json`$schema), op$response)
    }
  }
})

test_that("every request and response field is the document's", {
  skip_without_document()
  for (name in names(.tre_requests)) {
    s <- schema(name)
    expect(all(.tre_requests[[name]] %in% names(properties(s))), sprintf("%s: fields not in the document", name))
    expect(all(unlist(resolve(s)$required) %in% .tre_requests[[name]]),
           sprintf("%s: the document requires fields the package never sends", name))
  }
  for (name in names(.tre_fields)) {
    missing <- setdiff(.tre_fields[[name]], names(properties(schema(name))))
    expect(!length(missing), sprintf("%s: %s not in the document", name, paste(missing, collapse = ", ")))
  }
  expect_equal(unlist(schemas$Status$enum), .tre_statuses)
  expect_setequal(unlist(properties(schema("Error.error"))$code$enum), .tre_error_codes)
})

# wire_reads returns the names the package's functions read with x[["name"]]
# or x$name.
wire_reads <- function() {
  ns <- asNamespace("treclient")
  found <- list(brackets = character(), dollar = character())
  walk <- function(e) {
    if (is.call(e)) {
      f <- e[[1]]
      if (identical(f, as.name("[[")) && length(e) == 3 && is.character(e[[3]])) {
        found$brackets <<- c(found$brackets, e[[3]])
      }
      if (identical(f, as.name("$")) && length(e) == 3) {
        found$dollar <<- c(found$dollar, as.character(e[[3]]))
      }
      for (x in as.list(e)[-1]) if (!missing(x)) walk(x)
    } else if (is.function(e)) {
      walk(body(e))
    }
  }
  for (n in ls(ns, all.names = TRUE)) {
    obj <- get(n, envir = ns)
    if (is.function(obj)) walk(body(obj))
  }
  lapply(found, unique)
}

test_that("the package reads only declared wire fields", {
  declared <- unique(c(unlist(.tre_fields), unlist(.tre_requests), unlist(lapply(.tre_operations, `[[`, "params")),
                       .tre_statuses, .tre_error_codes))
  reads <- wire_reads()
  # x[["name"]] is how wire fields are read; capitalised names are
  # environment variables of tokens files, and httr's headers are lower case.
  headers <- c("location", "retry-after")
  undeclared <- setdiff(reads$brackets[!grepl("^[A-Z]", reads$brackets)], c(declared, headers))
  expect(!length(undeclared), sprintf("read with [[ but not declared in R/wire.R: %s", paste(undeclared, collapse = ", ")))
  # x$name is for the package's own lists: the client, operations, the
  # arguments of httr::VERB. A wire field read with $ must be declared too.
  own <- c("base_url", "token", "role", "timeout", "method", "path", "params", "request", "response", "query", "body")
  undeclared <- setdiff(reads$dollar, c(declared, own))
  expect(!length(undeclared), sprintf("read with $ but neither declared nor the package's own: %s",
                                      paste(undeclared, collapse = ", ")))
})
