package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newInitCmd() *cobra.Command {
	return &cobra.Command{
		Use:  "init",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return errors.New("weft-proxy init is not built yet") },
	}
}
