# Runs the tests of the installed package (R CMD check). Those against a
# running tre skip unless TRE_BROKER and the role tokens are set; cmd/tre's
# TestClients sets them.
library(testthat)
library(treclient)

test_check("treclient")
