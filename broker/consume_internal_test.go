package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/cluster"
)

// A GET whose outcome is unknown reads as such on both APIs, whatever the
// cause: "ERR outcome unknown: ..." on TCP and outcome_unknown on NATS,
// never unavailable (which tells a client that nothing happened).
func TestGetOutcomeUnknownError(t *testing.T) {
	causes := []any{
		fmt.Errorf("advance_cursor: %w (last attempt: %w)", context.DeadlineExceeded, cluster.ErrOutcomeUnknown),
		"cursor moved; the moves from there are no longer remembered",
	}
	for _, why := range causes {
		err := errGetOutcomeUnknown("orders", 7, why)
		if msg := protocol.ErrorMessage(err); !strings.HasPrefix(msg, "outcome unknown: GET orders: ") ||
			!strings.Contains(msg, "offset 7 may have been consumed") {
			t.Errorf("TCP message %q", msg)
		}
		if code := bridge.PublicCode(publicError(err, false)); code != bridge.PublicOutcomeUnknown {
			t.Errorf("NATS code %s for %v", code, err)
		}
		if retryable(err) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v is retryable or a timeout", err)
		}
	}
}
