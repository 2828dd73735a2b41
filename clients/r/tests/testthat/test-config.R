# Where a client finds the broker and its token (docs/cli.md's order).

demo_dir <- function(tokens = NULL) {
  dir <- tempfile("tre")
  dir.create(file.path(dir, "tre-demo"), recursive = TRUE)
  if (!is.null(tokens)) writeLines(tokens, file.path(dir, "tre-demo", "tokens.env"))
  dir
}

test_that("the token and address come from the first place that has them", {
  dir <- demo_dir(c("TRE_BROKER=http://127.0.0.1:9/", "TRE_TOKEN_RESEARCHER=demo-r", "TRE_TOKEN_REVIEWER=demo-v"))
  bare <- file.path(dir, "tok")
  writeLines("file-token", bare)
  envfile <- file.path(dir, "t.env")
  writeLines(c("export TRE_BROKER='https://b.example'", "TRE_TOKEN=file-any"), envfile)
  env <- c(TRE_TOKEN_RESEARCHER = "env-r", TRE_TOKEN = "env-any", TRE_BROKER = "https://env.example")
  cases <- list(
    list("argument wins", NULL, "arg", "researcher", bare, env, c("https://env.example", "arg")),
    list("token file over environment", NULL, NULL, "researcher", bare, env, c("https://env.example", "file-token")),
    list("tokens.env as token file", NULL, NULL, "reviewer", envfile, c(), c("https://b.example", "file-any")),
    list("role variable", NULL, NULL, "researcher", NULL, env, c("https://env.example", "env-r")),
    list("TRE_TOKEN for another role", NULL, NULL, "reviewer", NULL, env, c("https://env.example", "env-any")),
    list("demo file", NULL, NULL, "reviewer", NULL, c(), c("http://127.0.0.1:9", "demo-v")),
    list("demo file, environment's broker", NULL, NULL, "researcher", NULL, c(TRE_BROKER = "http://x:1"), c("http://x:1", "demo-r")),
    list("base_url argument", "http://arg:2/", "t", "admin", NULL, env, c("http://arg:2", "t"))
  )
  for (c in cases) {
    got <- .resolve(c[[2]], c[[3]], c[[4]], c[[5]], c[[6]], dir)
    expect_equal(c(got$base_url, got$token), c[[7]], label = c[[1]])
  }
  expect_equal(.resolve(NULL, "t", "researcher", NULL, c(), demo_dir())$base_url, "http://127.0.0.1:8080")
})

test_that("a missing token or a bad address is an error that says what to do", {
  dir <- demo_dir(c("TRE_TOKEN_RESEARCHER=demo-r"))
  expect_error(.resolve(NULL, NULL, "output_checker", NULL, c(), dir),
               "no token: .*TRE_TOKEN_OUTPUT_CHECKER or TRE_TOKEN", class = "tre_error")
  expect_error(.resolve(NULL, NULL, "admin", file.path(dir, "missing"), c(), dir), "read token file", class = "tre_error")
  envfile <- file.path(dir, "t.env")
  writeLines("TRE_TOKEN_ADMIN=a", envfile)
  expect_error(.resolve(NULL, NULL, "reviewer", envfile, c(), dir), "sets neither TRE_TOKEN_REVIEWER nor TRE_TOKEN")
  expect_error(.resolve("127.0.0.1:8080", "t", "researcher", NULL, c(), dir), "http:// or https://")
  expect_error(tre_client(token = "t", role = "nurse"), "should be one of")
})

test_that("the token is never printed", {
  c <- tre_client("http://127.0.0.1:1", token = "secret-token")
  expect_output(print(c), "<tre_client http://127.0.0.1:1 as researcher>")
  expect_false(grepl("secret", paste(capture.output(print(c)), collapse = "")))
})

test_that("ids are positive whole numbers or queries", {
  expect_equal(.id(7), 7)
  expect_equal(.id(list(id = 9L)), 9L)
  for (bad in list(0, -1, "7", 1.5, NA, c(1, 2), TRUE)) {
    expect_error(.id(bad), "positive whole number")
  }
})

test_that("an unreachable broker is a tre_unreachable condition", {
  # Nothing listens on port 1 (tcpmux) of a test machine.
  c <- tre_client("http://127.0.0.1:1", token = "t", timeout = 5)
  expect_error(tre_datasets(c), "cannot reach the broker at", class = "tre_unreachable")
})

test_that("API errors are conditions of their code's class", {
  e <- tryCatch(.api_error(422L, "refused", "refused: function read_csv at position 14 is not allowed"),
                error = function(e) e)
  expect_s3_class(e, c("tre_refused", "tre_api_error", "tre_error", "error", "condition"), exact = TRUE)
  expect_equal(e$code, "refused")
  expect_equal(e$status, 422L)
  expect_equal(e$api_message, "refused: function read_csv at position 14 is not allowed")
  expect_match(conditionMessage(e), "read_csv at position 14 .*\\(HTTP 422, refused\\)")
  e <- tryCatch(.api_error(418L, "teapot", "a code the package does not know"), error = function(e) e)
  expect_s3_class(e, c("tre_api_error", "tre_error", "error", "condition"), exact = TRUE)
  e <- tryCatch(.api_error(429L, "rate_limited", "one at a time", 3L), error = function(e) e)
  expect_equal(e$retry_after, 3L)
})
