package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:  "run",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return errors.New("weft-proxy run is not built yet") },
	}
}
