package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newAwaitCmd() *cobra.Command {
	return &cobra.Command{
		Use:  "await",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return errors.New("weft-proxy await is not built yet") },
	}
}
