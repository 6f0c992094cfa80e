package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a goroutine outlives its tests: every stream, debouncer and watch
// the tests start must be stopped by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
