package cli

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves goroutines behind: the store tests
// run meshd serve in this process and must stop all of it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
