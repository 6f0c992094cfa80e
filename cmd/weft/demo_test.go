package main

import (
	"strings"
	"testing"
)

func TestDemoFlagMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "--block", "300"}, "--block 300: want 0 to 255"},
		{[]string{"demo", "--fail-rate", "1.5"}, "--fail-rate 1.5: want a share between 0 and 1"},
		{[]string{"demo", "extra"}, "unknown command"},
		{[]string{"demo", "--rps", "0"}, "--rps 0: want at least 1"},
		{[]string{"demo", "--rps", "-1"}, "--rps -1: want at least 1"},
		{[]string{"demo", "--interval", "0"}, "--interval 0s: want a positive duration"},
		{[]string{"demo", "--duration", "-1s"}, "--duration -1s: want 0 (until Ctrl-C) or a positive duration"},
	} {
		root := newRootCmd()
		root.SetArgs(tc.args)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("weft %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
