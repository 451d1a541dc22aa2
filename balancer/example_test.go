package balancer_test

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/lbctl/lbctl/balancer"
)

// A connection handler picks a backend, and on a failed connect retries with
// another one until the retries are used up or nothing is left.
func Example() {
	web1 := balancer.NewBackend("10.0.0.11:80")
	web2 := balancer.NewBackend("10.0.0.12:80")
	spare := balancer.NewBackend("10.0.0.99:80")
	pool, err := balancer.New(balancer.RoundRobin, []balancer.Member{
		{Backend: web1, Weight: 3},
		{Backend: web2, Weight: 1},
		{Backend: spare, Weight: 1, Backup: true},
	})
	if err != nil {
		panic(err)
	}

	// Pretend web1 refuses connections.
	dial := func(b *balancer.Backend) error {
		if b == web1 {
			return errors.New("connection refused")
		}
		return nil
	}

	const retries = 2
	client := netip.MustParseAddrPort("192.0.2.10:40000")
	var tried balancer.Tried
	for attempt := 0; attempt <= retries; attempt++ {
		b := pool.Pick(client, &tried)
		if b == nil {
			fmt.Println("no backend left")
			break
		}
		tried.Add(b)
		b.Acquire() // busy from the pick on
		if err := dial(b); err != nil {
			b.Release()
			b.AddFailure()
			fmt.Printf("attempt %d: %s: %v\n", attempt, b.Address(), err)
			continue
		}
		b.Established()
		fmt.Printf("attempt %d: connected to %s\n", attempt, b.Address())
		b.Release() // when the connection ends
		break
	}
	// Output:
	// attempt 0: 10.0.0.11:80: connection refused
	// attempt 1: connected to 10.0.0.12:80
}

// When every primary is out of service, backups take the connections; when a
// primary returns it takes them back.
func ExamplePool_Pick_backups() {
	primary := balancer.NewBackend("10.0.0.11:80")
	backup := balancer.NewBackend("10.0.0.99:80")
	pool, _ := balancer.New(balancer.LeastConnections, []balancer.Member{
		{Backend: primary, Weight: 1},
		{Backend: backup, Weight: 1, Backup: true},
	})
	client := netip.MustParseAddrPort("192.0.2.10:40000")

	fmt.Println(pool.Pick(client, nil).Address())
	primary.SetAdmin(balancer.Draining)
	fmt.Println(pool.Pick(client, nil).Address())
	primary.SetAdmin(balancer.Enabled)
	fmt.Println(pool.Pick(client, nil).Address())
	// Output:
	// 10.0.0.11:80
	// 10.0.0.99:80
	// 10.0.0.11:80
}
