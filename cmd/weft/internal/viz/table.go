package viz

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
)

// WriteStatTable prints rows as Linkerd's `viz stat` does: NAME MESHED SUCCESS RPS LATENCY_P50
// LATENCY_P95 LATENCY_P99 TCP_CONN (with NAMESPACE first when namespaces is set, READ_BYTES/SEC and
// WRITE_BYTES/SEC last when wide).
func WriteStatTable(w io.Writer, rows []StatRow, namespaces, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	header := "NAME\tMESHED\tSUCCESS\tRPS\tLATENCY_P50\tLATENCY_P95\tLATENCY_P99\tTCP_CONN\t"
	if namespaces {
		header = "NAMESPACE\t" + header
	}
	if wide {
		header += "READ_BYTES/SEC\tWRITE_BYTES/SEC\t"
	}
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		line := ""
		if namespaces {
			line = r.Namespace + "\t"
		}
		line += fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t", r.Name, r.Meshed(), percent(r.Success), rps(r),
			ms(r.LatencyMsP50), ms(r.LatencyMsP95), ms(r.LatencyMsP99), strconv.FormatFloat(r.TCPConnections, 'f', 0, 64))
		if wide {
			line += bytesRate(r.ReadBytesPerSec) + "\t" + bytesRate(r.WriteBytesPerSec) + "\t"
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// WriteEdgesTable prints edges as SRC DST SRC_NS DST_NS SECURED CLIENT_ID SERVER_ID (Linkerd's
// `viz edges`, with the SPIFFE IDs).
func WriteEdgesTable(w io.Writer, edges []Edge) error {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "SRC\tDST\tSRC_NS\tDST_NS\tSECURED\tCLIENT_ID\tSERVER_ID")
	for _, e := range edges {
		secured, client, server := "×", e.ClientID, e.ServerID
		if e.Secured {
			secured = "√"
		}
		if client == "" {
			client = "-"
		}
		if server == "" {
			server = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Src, "svc/"+e.Dst, e.SrcNamespace, e.DstNamespace, secured, client, server)
	}
	return tw.Flush()
}

func percent(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", *v*100)
}

func rps(r StatRow) string {
	if r.Success == nil {
		return "-"
	}
	return fmt.Sprintf("%.1frps", r.RPS)
}

func ms(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', 0, 64) + "ms"
}

func bytesRate(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1fB/s", *v)
}
