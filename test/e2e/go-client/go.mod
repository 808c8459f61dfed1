module edge-registry/e2e/go-client

go 1.19
