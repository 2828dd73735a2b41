# tre_kaplan_meier against the numbers of the Go implementation
# (api.KaplanMeier, `tre query km`): the same table gives the same curve.

survival_table <- function(half) {
  cell <- function(v) if (half > 0) list(value = v, ci_low = v - half, ci_high = v + half) else list(value = v)
  list(columns = list(list(name = "years_band", kind = "group"), list(name = "deaths", kind = "count"),
                      list(name = "censored", kind = "count")),
       rows = list(list(list(key = "0-1"), cell(10), cell(20)), list(list(key = "1-2"), cell(30), cell(40))))
}

test_that("the curve and its interval are tre query km's", {
  km <- tre_kaplan_meier(survival_table(6))
  expect_equal(km$band, c("0-1", "1-2"))
  expect_equal(km$at_risk, c(100, 70))
  # tre query km prints 0.888 [0.799, 0.978] and 0.255 [0.114, 0.397].
  expect_equal(round(km$survival, 3), c(0.888, 0.255))
  expect_equal(round(km$ci_low, 3), c(0.799, 0.114))
  expect_equal(round(km$ci_high, 3), c(0.978, 0.397))
  exact <- tre_kaplan_meier(survival_table(0))
  s1 <- exact$survival[1]
  # Near the actuarial 1 - 10/90 (n0 = 100, 90 effectively at risk), where
  # few die; Greenwood's term with n' = d/q.
  expect_lt(abs(s1 - (1 - 10 / 90)), 0.002)
  eff <- 10 / (1 - s1)
  expect_equal((exact$ci_high[1] - exact$ci_low[1]) / 2, 1.959963984540054 * s1 * sqrt(10 / (eff * (eff - 10))))
})

test_that("another table or a suppressed band is an error saying what is expected", {
  expect_error(tre_kaplan_meier(survival_table(0), deaths = "died"), "count columns \"died\" and \"censored\".*deaths \\(count\\)")
  t <- survival_table(0)
  t$rows[[1]][[2]] <- list(suppressed = TRUE)
  expect_error(tre_kaplan_meier(t), "band \"0-1\": deaths is suppressed")
})
