package main

import (
	"strings"
	"testing"
)

func TestResolveMemory(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	for _, tc := range []struct {
		name      string
		gc        int
		gcSet     bool
		limit     string
		env       map[string]string
		cgroup    string
		want      memorySettings
		wantError string
	}{
		{name: "defaults outside a container", gc: 100, cgroup: "", want: memorySettings{gcPercent: 100}},
		{name: "unlimited cgroup", gc: 100, cgroup: "max\n", want: memorySettings{gcPercent: 100}},
		{name: "cgroup limit: 90% of it", gc: 100, cgroup: "104857600\n", want: memorySettings{gcPercent: 100, limit: 94371840}},
		{name: "GOGC and GOMEMLIMIT are left to the runtime", gc: 100, env: map[string]string{"GOGC": "200", "GOMEMLIMIT": "1GiB"}, cgroup: "104857600", want: memorySettings{gcPercent: -1}},
		{name: "flags win over the environment", gc: 80, gcSet: true, limit: "64MiB", env: map[string]string{"GOGC": "200", "GOMEMLIMIT": "1GiB"}, want: memorySettings{gcPercent: 80, limit: 64 << 20}},
		{name: "plain bytes", gc: 100, limit: "1000000", want: memorySettings{gcPercent: 100, limit: 1000000}},
		{name: "bad limit", gc: 100, limit: "64MB", wantError: `--memory-limit "64MB": want a positive number of bytes`},
		{name: "negative gc percent", gc: -1, gcSet: true, wantError: "--gc-percent -1: want 0 or more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveMemory(tc.gc, tc.gcSet, tc.limit, env(tc.env), tc.cgroup)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("error = %v, want %q", err, tc.wantError)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
