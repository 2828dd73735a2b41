package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestBenchFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no size", []string{}, "--patients"},
		{"zero reps", []string{"--patients", "10", "--reps", "0"}, "--reps"},
		{"negative warm-up", []string{"--patients", "10", "--warmup", "-1"}, "--warmup"},
		{"no clients", []string{"--patients", "10", "--clients", "0"}, "--clients"},
		{"stray argument", []string{"--patients", "10", "extra"}, "extra"},
		{"api-only without a catalog", []string{"--api-only", "--patients", "10"}, "--catalog"},
		{"api-only with explain", []string{"--api-only", "--catalog", "c.yaml", "--explain", "all"}, "--explain"},
		{"one federated site", []string{"--patients", "10", "--federated", "1"}, "--federated"},
		{"federated api-only", []string{"--api-only", "--catalog", "c.yaml", "--federated", "3"}, "--federated"},
		{"memory limit not a size", []string{"--patients", "10", "--memory-limit", "lots"}, "--memory-limit"},
		{"memory limit too small", []string{"--patients", "10", "--memory-limit", "1MB"}, "--memory-limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := newBenchMain(&buf, &buf).ParseFlags(context.Background(), tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseFlags(%q) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}

// TestBenchMemoryLimit: --memory-limit sets the sandbox children's limit,
// in the agent's units; without it the sandbox's default stands.
func TestBenchMemoryLimit(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want int64
	}{
		{[]string{"--patients", "10"}, 0},
		{[]string{"--patients", "10", "--memory-limit", "800MiB"}, 800 << 20},
		{[]string{"--patients", "10", "--memory-limit", "1GB"}, 1e9},
	} {
		var buf bytes.Buffer
		m := newBenchMain(&buf, &buf).(*BenchMain)
		if err := m.ParseFlags(context.Background(), tt.args); err != nil {
			t.Fatalf("ParseFlags(%q): %v", tt.args, err)
		}
		if m.cfg.MemoryLimit != tt.want {
			t.Errorf("ParseFlags(%q): memory limit %d, want %d", tt.args, m.cfg.MemoryLimit, tt.want)
		}
	}
}
