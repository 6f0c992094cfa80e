package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestCommandLine: the command line a user types, through execute as main runs it.
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		out     []string // substrings of stdout
		wantErr string
	}{
		{args: []string{"--version"}, out: []string{"weft-proxy "}},
		{args: []string{"version"}, out: []string{"weft-proxy "}},
		{args: []string{"--help"}, out: []string{"Commands:", "run ", "init ", "await ", "validate ", "version ", "runs the proxy (run) with the flags below", "--xds-addr"}},
		{args: []string{"validate", "--help"}, out: []string{"weft-proxy validate [flags]", "--connect-addr"}},
		{args: []string{"init", "-h"}, out: []string{"Program the nat table", "-skip-inbound-ports", "-inbound-port"}},
		{args: []string{"frobnicate"}, wantErr: `unknown command "frobnicate": want run, init, await or validate`},
		{args: []string{"--no-such-flag"}, wantErr: "run: unknown flag: --no-such-flag (weft-proxy run --help)"},
		{args: []string{"await", "--timeout", "soon"}, wantErr: `await: invalid argument "soon" for "--timeout" flag`},
		{args: []string{"await", "extra"}, wantErr: `await: unexpected argument "extra"`},
		{args: []string{"init", "--dry-run", "--inbound-port", "70000"}, wantErr: `init: invalid argument "70000" for "--inbound-port" flag: want a number from 0 to 65535 (weft-proxy init --help)`},
		{args: []string{"init", "--dry-run", "--proxy-uid=1337", "--skip-inbound-ports", "22", "--outbound-port", "15001"}, out: []string{"*nat", "--dport 22", "--uid-owner 1337"}},
		{args: []string{"run", "--pod-name", "p", "--namespace", "n"}, wantErr: "missing --xds-addr (or XDS_ADDR)"},
		{args: []string{"--xds-addr", "127.0.0.1:1", "--pod-name", "p", "--namespace", "n", "--gc-percent=-5"}, wantErr: "--gc-percent -5: want 0 or more"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("XDS_ADDR", "")
			var out bytes.Buffer
			err := execute(context.Background(), tc.args, &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.out {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
}
