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

test_that("group columns before the bands are strata, one curve each", {
  female <- survival_table(6)
  male <- survival_table(6)
  male$rows[[2]][[2]] <- list(value = 5, ci_low = 0, ci_high = 11)
  male$rows[[2]][[3]] <- list(value = 5, ci_low = 0, ci_high = 11)
  both <- list(columns = c(list(list(name = "sex", kind = "group")), female$columns), rows = list())
  for (i in 1:2) {
    both$rows <- c(both$rows, list(c(list(list(key = "female")), female$rows[[i]]), c(list(list(key = "male")), male$rows[[i]])))
  }
  km <- tre_kaplan_meier(both)
  expect_equal(names(km)[1], "stratum")
  expect_equal(km$stratum, c("sex=female", "sex=female", "sex=male", "sex=male"))
  expect_equal(km$band, c("0-1", "1-2", "0-1", "1-2"))
  # The female curve is the one-stratum table's (tre query km: 0.888 first).
  expect_equal(round(km$survival[1:2], 3), c(0.888, 0.255))
  alone <- tre_kaplan_meier(male)
  expect_equal(km$survival[3:4], alone$survival)
  expect_equal(km$ci_low[3:4], alone$ci_low)
  both$rows[[4]][[3]] <- list(suppressed = TRUE)
  expect_error(tre_kaplan_meier(both), "stratum sex=male: band \"1-2\": deaths is suppressed")
})
