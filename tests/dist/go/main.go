// tests/dist: a Go program in a module outside the checkout that requires the binding
// (github.com/sfc/sfc/bindings/go, replaced by the binding's folder) and links libsfc from an
// installed prefix through pkg-config. It registers in GROUP as INSTANCE, prints
// "connected ...", waits until STOP_FILE exists (up to 60 s), leaves and prints "stopped".
//
//	dist-go ADDR CA GROUP INSTANCE STOP_FILE
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	sfc "github.com/sfc/sfc/bindings/go"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: dist-go ADDR CA GROUP INSTANCE STOP_FILE")
		os.Exit(2)
	}
	addr, ca, group, instance, stop := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := sfc.Start(ctx, sfc.Config{
		Registries: []string{addr},
		CA:         ca,
		Group:      group,
		InstanceID: instance,
		Version:    sfc.Version(),
		IgnoreEnv:  true,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		os.Exit(1)
	}
	if err := client.WaitConnected(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "wait connected:", err)
		os.Exit(1)
	}
	fmt.Printf("connected %s/%s libsfc %s\n", group, instance, sfc.Version())
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelClose()
	if err := client.Close(closeCtx); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		os.Exit(1)
	}
	fmt.Println("stopped")
}
