module github.com/sfc/sfc-go

go 1.22
