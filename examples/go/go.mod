module github.com/sfc/sfc/examples/go

go 1.22

require github.com/sfc/sfc/bindings/go v0.0.0

replace github.com/sfc/sfc/bindings/go => ../../bindings/go
