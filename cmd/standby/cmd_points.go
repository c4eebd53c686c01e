package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"standby/internal/mastertarget"
	"standby/internal/statusapi"
)

// mtFlags are the flags every recovery-point command needs.
type mtFlags struct {
	addr, machine, output string
}

func (f *mtFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.addr, "master-target", "", "master target status address host:port or unix:PATH")
	cmd.Flags().StringVar(&f.machine, "machine", "", "protected machine")
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "text or json")
	_ = cmd.MarkFlagRequired("master-target")
	_ = cmd.MarkFlagRequired("machine")
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func pointsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "points", Short: "List and tag recovery points"}
	var lf mtFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List a machine's recovery points, oldest first",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pts []mastertarget.PointInfo
			if err := statusapi.Call(cmd.Context(), lf.addr, "GET", "/machines/"+url.PathEscape(lf.machine)+"/points", nil, &pts); err != nil {
				return err
			}
			if lf.output == "json" {
				return printJSON(pts)
			}
			w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tTIME\tKIND\tCONSISTENT\tNAME\tGROUP\tSEQ\tNOTE")
			for _, p := range pts {
				fmt.Fprintf(w, "%d\t%s\t%s\t%v\t%s\t%s\t%d\t%s\n", p.ID, p.Time.Format(time.RFC3339Nano), p.Kind, p.Consistent, p.Name, p.Group, p.Seq, p.Note)
			}
			return w.Flush()
		},
	}
	lf.register(list)
	var tf mtFlags
	var name string
	tag := &cobra.Command{
		Use:   "tag POINT",
		Short: "Name a point (ID, latest, or an RFC 3339 time) so retention keeps it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p mastertarget.PointInfo
			body := map[string]string{"name": name}
			if err := statusapi.Call(cmd.Context(), tf.addr, "POST", "/machines/"+url.PathEscape(tf.machine)+"/points/"+url.PathEscape(args[0])+"/tag", body, &p); err != nil {
				return err
			}
			if tf.output == "json" {
				return printJSON(p)
			}
			fmt.Printf("point %d (%s) tagged %q\n", p.ID, p.Time.Format(time.RFC3339Nano), p.Name)
			return nil
		},
	}
	tf.register(tag)
	tag.Flags().StringVar(&name, "name", "", "tag name")
	_ = tag.MarkFlagRequired("name")
	cmd.AddCommand(list, tag)
	return cmd
}

func viewCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "view", Short: "Open, list and close point-in-time views served over NBD"}
	var of mtFlags
	var point string
	open := &cobra.Command{
		Use:   "open",
		Short: "Open every disk of a machine at a point as copy-on-write NBD exports",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v mastertarget.ViewInfo
			if err := statusapi.Call(cmd.Context(), of.addr, "POST", "/machines/"+url.PathEscape(of.machine)+"/views", mastertarget.ViewRequest{Point: point}, &v); err != nil {
				return err
			}
			if of.output == "json" {
				return printJSON(v)
			}
			fmt.Printf("view %s of %s at point %d (%s, %s)\n", v.ID, v.Machine, v.Point.ID, v.Point.Time.Format(time.RFC3339Nano), v.Point.Kind)
			for _, e := range v.Exports {
				fmt.Printf("  %s\t%s\n", e.Disk, e.URI)
			}
			return nil
		},
	}
	of.register(open)
	open.Flags().StringVar(&point, "point", "latest", "point ID, latest, or an RFC 3339 time (newest consistent point at or before it)")
	var addr, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List open views",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var vs []mastertarget.ViewInfo
			if err := statusapi.Call(cmd.Context(), addr, "GET", "/views", nil, &vs); err != nil {
				return err
			}
			if output == "json" {
				return printJSON(vs)
			}
			w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VIEW\tMACHINE\tPOINT\tTIME\tOPENED\tEXPORTS")
			for _, v := range vs {
				for i, e := range v.Exports {
					if i == 0 {
						fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s %s\n", v.ID, v.Machine, v.Point.ID, v.Point.Time.Format(time.RFC3339), v.Opened.Format(time.RFC3339), e.Disk, e.URI)
					} else {
						fmt.Fprintf(w, "\t\t\t\t\t%s %s\n", e.Disk, e.URI)
					}
				}
			}
			return w.Flush()
		},
	}
	list.Flags().StringVar(&addr, "master-target", "", "master target status address")
	list.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	_ = list.MarkFlagRequired("master-target")
	var caddr string
	closeC := &cobra.Command{
		Use:   "close VIEW",
		Short: "Close a view and discard its writes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := statusapi.Call(cmd.Context(), caddr, "DELETE", "/views/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Printf("view %s closed\n", args[0])
			return nil
		},
	}
	closeC.Flags().StringVar(&caddr, "master-target", "", "master target status address")
	_ = closeC.MarkFlagRequired("master-target")
	cmd.AddCommand(open, list, closeC)
	return cmd
}

func exportCmd() *cobra.Command {
	var f mtFlags
	var point, disk, format, path string
	cmd := &cobra.Command{
		Use:     "export",
		Short:   "Materialise a disk at a point as a raw (sparse), qcow2 or VMDK image, on the master target",
		Example: `  standby export --master-target 127.0.0.1:7303 --machine web1 --disk disk0 --point latest --format qcow2 --path /srv/restore/web1.qcow2`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var job mastertarget.ExportJob
			req := mastertarget.ViewRequest{Point: point, Disk: disk, Format: format, Path: path}
			if err := statusapi.Call(cmd.Context(), f.addr, "POST", "/machines/"+url.PathEscape(f.machine)+"/exports", req, &job); err != nil {
				return err
			}
			// Each request waits on the master target until the job ends or
			// half a second passes (progress), so the end is seen at once.
			for !job.Done {
				if err := statusapi.Call(cmd.Context(), f.addr, "GET", "/exports/"+job.ID+"?wait=500ms", nil, &job); err != nil {
					return err
				}
				if f.output != "json" && job.Progress.Total > 0 {
					fmt.Fprintf(os.Stderr, "\r%5.1f%%  %s/%s  %s/s   ", 100*float64(job.Progress.Done)/float64(job.Progress.Total), bytesH(job.Progress.Done), bytesH(job.Progress.Total), bytesH(int64(job.Progress.Rate)))
				}
			}
			if f.output == "json" {
				if err := printJSON(job); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(os.Stderr)
			}
			if job.Error != "" {
				return fmt.Errorf("export failed: %s", job.Error)
			}
			if f.output != "json" {
				fmt.Printf("%s of %s at point %d (%s) written to %v in %s\n", job.Disk, job.Machine, job.Point.ID, job.Point.Time.Format(time.RFC3339), job.Files, job.Took.Round(time.Millisecond))
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&point, "point", "latest", "point ID, latest, or an RFC 3339 time")
	cmd.Flags().StringVar(&disk, "disk", "", "disk name (optional for single-disk machines)")
	cmd.Flags().StringVar(&format, "format", "raw", "raw, qcow2 or vmdk")
	cmd.Flags().StringVar(&path, "path", "", "absolute path of the image on the master target")
	_ = cmd.MarkFlagRequired("path")
	return cmd
}
