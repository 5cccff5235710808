module github.com/sfc/sfc-go/examples/go

go 1.22

require github.com/sfc/sfc-go v0.0.0

replace github.com/sfc/sfc-go => ../../bindings/go
