package discovery

import (
	"testing"

	"go.uber.org/goleak"
)

// Every source's Run returns with its goroutines, watchers and etcd client
// gone.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
