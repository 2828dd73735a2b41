# treclient against a running tre: broker, site agent and sandbox. Runs
# when TRE_BROKER and the tokens of a researcher, a reviewer and an output
# checker are set (tre demo's tokens.env); cmd/tre's TestClients starts
# `tre demo` and runs these tests against it.

needed <- c("TRE_BROKER", "TRE_TOKEN_RESEARCHER", "TRE_TOKEN_REVIEWER", "TRE_TOKEN_OUTPUT_CHECKER")
skip_if_offline_tre <- function() {
  if (!all(nzchar(Sys.getenv(needed)))) skip(paste("needs a running tre: set", paste(needed, collapse = ", ")))
}

sql <- "SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"
eps <- 0.1

people <- function() {
  alice <- tre_client()
  list(alice = alice, bob = tre_client(role = "reviewer"), carol = tre_client(role = "output_checker"),
       project = tre_projects(alice)$id[1])
}

test_that("a query is submitted, approved, run, released and read back as a data frame", {
  skip_if_offline_tre()
  p <- people()
  expect_true("patients" %in% vapply(tre_datasets(p$alice)[[1]]$tables, function(t) t$name, ""))
  expect_equal(tre_check(p$alice, p$project, sql, epsilon = eps)$cost$epsilon, eps)
  dry <- tre_dry_run(p$alice, p$project, sql)
  expect_true(attr(dry, "synthetic"))
  expect_setequal(dry$sex, c("female", "male", "unknown"))

  q <- tre_submit(p$alice, p$project, sql, purpose = "R client test: released", epsilon = eps)
  expect_equal(q$status, "submitted")
  expect_true(q$id %in% tre_review_queue(p$bob)$id)
  tre_approve(p$bob, q, comment = "ok")
  seen <- character()
  q2 <- tre_wait(p$bob, q, timeout = 180, progress = function(q) seen <<- c(seen, q$status))
  expect_equal(q2$status, "awaiting_output_check")
  expect_equal(tail(seen, 1), "awaiting_output_check")
  expect_true(q$id %in% tre_output_queue(p$carol)$id)
  expect_false(is.null(tre_output(p$carol, q)$result$report))
  expect_error(tre_result(p$alice, q), class = "tre_forbidden")
  tre_release(p$carol, q, comment = "safe")
  suppressMessages(expect_message(q3 <- tre_wait(p$alice, q, timeout = 180, final = TRUE), "released"))
  expect_equal(q3$status, "released")
  expect_equal(tre_status(p$alice, q), "released")
  expect_equal(tail(tre_history(p$alice, q)$to, 1), "released")
  expect_true(q$id %in% tre_queries(p$alice, status = "released")$id)

  df <- tre_result(p$alice, q)
  expect_s3_class(df, "data.frame")
  expect_equal(names(df), c("sex", "n", "n_ci_low", "n_ci_high", "n_flag"))
  expect_setequal(df$sex, c("female", "male", "unknown"))
  ok <- df$n_flag == ""
  expect_true(all(df$n_ci_low[ok] <= df$n[ok] & df$n[ok] <= df$n_ci_high[ok]))
  expect_true(all(df$n_flag[!ok] %in% c("suppressed", "secondary_suppressed")))
  expect_true(all(is.na(df$n[!ok])))
  expect_equal(attr(df, "query_id"), q$id)
  expect_equal(attr(df, "report")$epsilon, eps)
  expect_null(attr(df, "report")$rows_dropped_by_bounding)
  expect_match(tre_result_csv(p$alice, q), "^sex,n,n_ci_low,n_ci_high,n_flag")
})

test_that("a refused query's error names the construct and where it is", {
  skip_if_offline_tre()
  p <- people()
  for (f in list(function(s) tre_check(p$alice, p$project, s),
                 function(s) tre_submit(p$alice, p$project, s, purpose = "refused"))) {
    e <- tryCatch(f("SELECT * FROM read_csv('/etc/passwd')"), tre_refused = function(e) e)
    expect_s3_class(e, "tre_refused")
    expect_equal(e$status, 422L)
    expect_equal(e$code, "refused")
    expect_match(e$api_message, "function read_csv at position 14", fixed = TRUE)
  }
  expect_error(tre_submit(p$alice, p$project, sql, purpose = ""), class = "tre_invalid")
})

test_that("a wait times out; rejections and errors reach the caller", {
  skip_if_offline_tre()
  p <- people()
  q <- tre_submit(p$alice, p$project, sql, purpose = "R client test: nobody reviews it", epsilon = eps)
  expect_equal(tre_wait(p$alice, q, progress = FALSE)$status, "submitted") # awaits a person
  e <- tryCatch(tre_wait(p$alice, q, timeout = 2, final = TRUE, poll = 0.5, progress = FALSE), tre_timeout = function(e) e)
  expect_s3_class(e, "tre_timeout")
  expect_equal(e$query$status, "submitted")
  expect_equal(tre_cancel(p$alice, q)$status, "cancelled")

  q <- tre_submit(p$alice, p$project, sql, purpose = "R client test: rejected", epsilon = eps)
  expect_error(tre_approve(p$alice, q), class = "tre_forbidden")
  tre_reject(p$bob, q, reason = "out of scope")
  expect_equal(tre_wait(p$alice, q, timeout = 180, final = TRUE, progress = FALSE)$status, "rejected")
  expect_error(tre_get(p$alice, 1e9), class = "tre_not_found")
  expect_error(tre_datasets(tre_client(token = "not-a-token")), class = "tre_unauthorized")
})
