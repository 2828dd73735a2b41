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

# A survival table over every patient (docs/sql.md, Survival): years from
# registration to death, or censored at leaving the practice or the end of
# the extract, in public bands (k = 1), large enough that none is
# suppressed on the demo's synthetic patients.
survival_sql <- "SELECT
  CASE
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 5 THEN '0-5'
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 10 THEN '5-10'
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 20 THEN '10-20'
    ELSE '20+'
  END AS years_band,
  count(*) FILTER (WHERE p.date_of_death IS NOT NULL) AS deaths,
  count(*) FILTER (WHERE p.date_of_death IS NULL) AS censored
FROM patients p
GROUP BY years_band"

test_that("a released survival table's Kaplan-Meier curve is a survival curve and tre query km's", {
  skip_if_offline_tre()
  p <- people()
  q <- tre_submit(p$alice, p$project, survival_sql, purpose = "R client test: survival", epsilon = 0.5)
  tre_approve(p$bob, q, comment = "ok")
  expect_equal(tre_wait(p$bob, q, timeout = 180, progress = FALSE)$status, "awaiting_output_check")
  tre_release(p$carol, q, comment = "safe")
  expect_equal(tre_wait(p$alice, q, timeout = 180, final = TRUE, progress = FALSE)$status, "released")
  km <- tre_km(p$alice, q)
  expect_equal(km$band, c("0-5", "5-10", "10-20", "20+"))
  expect_true(all(diff(c(1, km$survival)) <= 0))
  expect_lt(km$survival[1], 1)
  expect_true(all(0 <= km$ci_low & km$ci_low <= km$survival & km$survival <= km$ci_high & km$ci_high <= 1))
  # The same released table through `tre query km --json` (TRE_CLI is the
  # tre binary; e2e/clients TestClients sets it).
  cli <- Sys.getenv("TRE_CLI")
  skip_if(!nzchar(cli), "set TRE_CLI to the tre binary to compare with tre query km")
  out <- system2(cli, c("query", "km", q$id, "--json"), stdout = TRUE)
  expect_null(attr(out, "status"))
  want <- jsonlite::fromJSON(paste(out, collapse = "\n"))
  expect_equal(km$band, want$band)
  for (k in c("at_risk", "deaths", "censored", "survival", "ci_low", "ci_high")) {
    expect_equal(km[[k]], want[[k]], tolerance = 1e-9, info = k)
  }
})
