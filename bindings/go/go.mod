module github.com/sfc/sfc/bindings/go

go 1.22
