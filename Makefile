# tre — common tasks. `make help` lists them.
GO ?= go
PKGS := ./...

.PHONY: help build test check fmt vet fuzz demo images images-replicas
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

build: ## build the tre binary into ./bin/tre
	$(GO) build -o bin/tre ./cmd/tre

test: ## run every test (the README's test command)
	$(GO) test $(PKGS)

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet
	$(GO) vet $(PKGS)

check: ## gofmt check, go vet and the tests
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) test $(PKGS)

demo: ## build tre, showing each package as it compiles, then run the demo
	@echo "Building bin/tre. The first build compiles tre and its dependencies: about 3 minutes on 2 cores; later builds take seconds."
	$(GO) build -v -o bin/tre ./cmd/tre
	@echo "Starting the demo: synthetic data, broker, site agent and sandbox."
	bin/tre demo

images: ## build the tre-broker and tre-agent images, no registry needed (deploy/image/build.sh)
	GO=$(GO) deploy/image/build.sh

images-replicas: ## also build tre-proxy and tre-postgres for deploy/compose.replicas.yaml
	GO=$(GO) deploy/image/build.sh replicas
