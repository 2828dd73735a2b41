package server

import (
	"log/slog"
	"net/http"
	"testing"
)

// TestRequestLevel: what repeats forever when all is well (an idle agent's
// poll, a heartbeat, a passing health probe) is logged at DEBUG; everything
// else, and any of those when it fails, at INFO.
func TestRequestLevel(t *testing.T) {
	for _, tt := range []struct {
		route  string
		status int
		want   slog.Level
	}{
		{"/api/v1/agent/lease", http.StatusNoContent, slog.LevelDebug},
		{"/api/v1/agent/lease", http.StatusOK, slog.LevelInfo},
		{"/api/v1/agent/jobs/:id/heartbeat", http.StatusOK, slog.LevelDebug},
		{"/api/v1/agent/jobs/:id/heartbeat", http.StatusConflict, slog.LevelInfo},
		{"/healthz", http.StatusOK, slog.LevelDebug},
		{"/readyz", http.StatusOK, slog.LevelDebug},
		{"/readyz", http.StatusServiceUnavailable, slog.LevelInfo},
		{"/api/v1/queries", http.StatusOK, slog.LevelInfo},
	} {
		if got := requestLevel(tt.route, tt.status); got != tt.want {
			t.Errorf("requestLevel(%s, %d) = %v, want %v", tt.route, tt.status, got, tt.want)
		}
	}
}
