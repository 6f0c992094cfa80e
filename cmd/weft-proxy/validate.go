package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:  "validate",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return errors.New("weft-proxy validate is not built yet") },
	}
}
