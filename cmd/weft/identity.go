package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/identity"
)

func newIdentityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Manage the mesh's certificate authority",
	}
	cmd.AddCommand(newIdentityBootstrapCmd())
	return cmd
}

func newIdentityBootstrapCmd() *cobra.Command {
	var (
		o            identity.BootstrapOptions
		out          string
		rotateIssuer bool
	)
	cmd := &cobra.Command{
		Use:   "bootstrap --out DIR",
		Short: "Create a trust anchor and an issuer (or a new issuer) for weft-control --identity-dir",
		Long: `Create the mesh's certificate authority in DIR:

  ca.crt      the trust bundle (the anchor; add older anchors here during an anchor rotation)
  ca.key      the anchor's key: needed only to sign new issuers, keep it offline in production
  issuer.crt  the issuer (intermediate CA) that signs workload certificates
  issuer.key  the issuer's key

All keys are ECDSA P-256. With --rotate-issuer, only issuer.crt and issuer.key are replaced by a new
issuer under the same anchor; a running weft-control picks it up without a restart.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required: the directory to write the CA into")
			}
			if err := identity.ValidateTrustDomain(o.TrustDomain); err != nil {
				return fmt.Errorf("--trust-domain: %w", err)
			}
			// Zero means "the default" inside identity.BootstrapOptions; a user who typed 0 or a negative
			// lifetime meant something else and would get a CA that is expired or far longer-lived.
			for _, l := range []struct {
				flag string
				d    time.Duration
			}{{"anchor-lifetime", o.AnchorLifetime}, {"issuer-lifetime", o.IssuerLifetime}} {
				if l.d < time.Hour {
					return fmt.Errorf("--%s %v: want at least 1h (such as 87600h for ten years, 8760h for one)", l.flag, l.d)
				}
			}
			if rotateIssuer {
				if !cmd.Flags().Changed("trust-domain") {
					o.TrustDomain = "" // the anchor's
				}
				if err := identity.RotateIssuer(out, o); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "new issuer written to %s and %s\n", filepath.Join(out, identity.IssuerCertFile), filepath.Join(out, identity.IssuerKeyFile))
				return nil
			}
			if err := identity.Bootstrap(out, o); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA for trust domain %s written to %s (%s, %s, %s, %s)\nrun: weft-control --identity-dir %s\n",
				o.TrustDomain, out, identity.BundleFile, identity.AnchorKeyFile, identity.IssuerCertFile, identity.IssuerKeyFile, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain of the mesh")
	f.StringVar(&out, "out", "", "directory to write the CA files into (created if missing)")
	f.DurationVar(&o.AnchorLifetime, "anchor-lifetime", identity.DefaultAnchorLifetime, "lifetime of the trust anchor")
	f.DurationVar(&o.IssuerLifetime, "issuer-lifetime", identity.DefaultIssuerLifetime, "lifetime of the issuer (capped at the anchor's)")
	f.BoolVar(&rotateIssuer, "rotate-issuer", false, "replace only the issuer, signed by the existing anchor in --out")
	f.BoolVar(&o.Force, "force", false, "overwrite an existing CA in --out")
	return cmd
}
