# Tables laid out as the CSV download, from the broker's JSON.

result <- jsonlite::fromJSON('{
  "query_id": 3, "released_at": "2026-01-01T00:00:00Z",
  "columns": [{"name": "region", "kind": "group"}, {"name": "n", "kind": "count"}, {"name": "bmi", "kind": "mean"}],
  "rows": [
    [{"key": "London"}, {"value": 120, "ci_low": 100.5, "ci_high": 139.5, "rounded": true}, {"value": 27.52, "ci_low": 16.45, "ci_high": 38.59}],
    [{"null": true}, {"suppressed": true}, {"value": 30.0, "ci_low": 20.0, "ci_high": 40.0}],
    [{"key": "North East"}, {"suppressed": true, "secondary": true}, {"suppressed": true}]
  ],
  "report": {"epsilon": 0.5, "delta": 0, "threshold": 10}
}', simplifyVector = FALSE)

test_that("a released table is a data frame with intervals and suppression marks", {
  df <- tre_table(result)
  expect_s3_class(df, "data.frame")
  expect_equal(names(df), c("region", "n", "n_ci_low", "n_ci_high", "n_flag", "bmi", "bmi_ci_low", "bmi_ci_high", "bmi_flag"))
  expect_equal(df$region, c("London", NA, "North East"))
  expect_equal(df$n, c(120, NA, NA))
  expect_equal(df$n_ci_low, c(100.5, NA, NA))
  expect_equal(df$n_ci_high, c(139.5, NA, NA))
  expect_equal(df$n_flag, c("", "suppressed", "secondary_suppressed"))
  expect_equal(df$bmi, c(27.52, 30, NA))
  expect_equal(df$bmi_flag, c("", "", "suppressed"))
  expect_type(df$n, "double")
  expect_equal(attr(df, "query_id"), 3L)
  expect_equal(attr(df, "report")$threshold, 10L)
  expect_null(attr(df, "synthetic"))
})

test_that("a dry run over a dataset several sites hold says it is one site's answer", {
  dry <- result
  dry$query_id <- NULL
  dry$released_at <- NULL
  dry$synthetic <- TRUE
  dry$run <- "synthetic_single_site"
  dry$federation <- list(sites = 3L, site_cost = list(epsilon = 1), project_cost = list(epsilon = 3))
  df <- tre_table(dry)
  expect_true(attr(df, "synthetic"))
  expect_equal(attr(df, "run"), "synthetic_single_site")
  expect_equal(attr(df, "federation")$sites, 3L)
  expect_null(attr(df, "query_id"))
})

test_that("an all-suppressed column is still numeric and an empty table is a data frame", {
  one <- result
  one$rows <- result$rows[3]
  expect_type(tre_table(one)$n, "double")
  empty <- tre_table(list(columns = list(), rows = list(), report = list()))
  expect_s3_class(empty, "data.frame")
  expect_equal(nrow(empty), 0)
  none <- result
  none$rows <- list()
  expect_equal(nrow(tre_table(none)), 0)
  expect_equal(ncol(tre_table(none)), 9)
})

test_that("flags", {
  expect_equal(vapply(list(list(), list(suppressed = TRUE), list(suppressed = TRUE, secondary = TRUE)), tre_flag, ""),
               c("", "suppressed", "secondary_suppressed"))
})
