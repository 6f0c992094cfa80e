package main

import (
	"strings"
	"testing"
)

func TestInitDryRunPrintsTheRules(t *testing.T) {
	out, err := runProxyCmd(t, "init", "--dry-run", "--skip-inbound-ports", "22", "--skip-outbound-ports", "5432,8000-8100",
		"--skip-subnets", "10.0.0.0/8", "--proxy-uid", "1337", "--inbound-port", "4143", "--outbound-port", "4140", "--admin-port", "4191")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"*nat\n",
		"-A WEFT_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n",
		"-A WEFT_INBOUND -p tcp -m tcp --dport 4191 -j RETURN\n",
		"-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 4143\n",
		"-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
		"-A WEFT_OUTPUT -d 10.0.0.0/8 -j RETURN\n",
		"-A WEFT_OUTPUT -p tcp -m tcp --dport 8000:8100 -j RETURN\n",
		"-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 4140\n",
		"-A OUTPUT -p tcp -j WEFT_OUTPUT\n",
		"COMMIT\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
}

func TestInitFlagMistakesAreOneClearMessage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--skip-inbound-ports", "ssh"}, `--skip-inbound-ports: port "ssh"`},
		{[]string{"--skip-outbound-ports", "9000-8000"}, "--skip-outbound-ports: port range \"9000-8000\" is backwards"},
		{[]string{"--skip-subnets", "10.0.0.0/40"}, "--skip-subnets: subnet \"10.0.0.0/40\" is not a CIDR"},
		{[]string{"--skip-subnets", "fd00::/8"}, "IPv6"},
		{[]string{"--iptables-mode", "ipvs"}, "--iptables-mode: iptables mode \"ipvs\" is not one of auto, nft, legacy"},
		{[]string{"--proxy-uid", "0"}, "proxy uid 0"},
		{[]string{"--outbound-port", "15006"}, "must differ"},
	} {
		_, err := runProxyCmd(t, append([]string{"init", "--dry-run"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("init %v: err = %v, want one line containing %q", tc.args, err, tc.want)
		}
	}
}

func TestValidateRejectsABadConnectAddr(t *testing.T) {
	_, err := runProxyCmd(t, "validate", "--connect-addr", "example.com:80")
	if err == nil || !strings.Contains(err.Error(), "--connect-addr") {
		t.Fatalf("err = %v, want it to name --connect-addr", err)
	}
}
