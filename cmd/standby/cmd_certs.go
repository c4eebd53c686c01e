package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"standby/internal/pki"
)

func certsCmd() *cobra.Command {
	var dir string
	var hosts, ids []string
	cmd := &cobra.Command{
		Use:     "certs",
		Short:   "Create a CA and certificates for components (until enrollment through the configuration server exists)",
		Example: `  standby certs --dir pki --host 127.0.0.1 --id agent/web1 --id process-server/ps1 --id master-target/mt1`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []pki.Identity
			for _, s := range ids {
				role, name, ok := strings.Cut(s, "/")
				if !ok {
					return fmt.Errorf("identity %q: want ROLE/NAME", s)
				}
				list = append(list, pki.Identity{Role: pki.Role(role), Name: name})
			}
			files, err := pki.DevPKI(dir, hosts, list...)
			if err != nil {
				return err
			}
			for _, id := range list {
				f := files[id]
				fmt.Printf("%s\tca=%s cert=%s key=%s\n", id, f.CA, f.Cert, f.Key)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "pki", "directory of the CA and certificates")
	f.StringSliceVar(&hosts, "host", []string{"127.0.0.1", "localhost"}, "host names / addresses servers are reached at")
	f.StringArrayVar(&ids, "id", nil, "ROLE/NAME to issue a certificate for (repeatable)")
	return cmd
}
