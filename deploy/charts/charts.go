// Package charts holds Weft's Helm chart (weft/) and renders it the way `helm template` does, with
// Helm's own loader, template engine and install order, so that `weft install` and `helm install` put
// the same objects on a cluster. Rendering is a function of values: no cluster, no I/O.
package charts

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
)

//go:embed all:weft
var files embed.FS

// ReleaseName is the Helm release name `weft install` renders as (what `helm install weft` would use).
const ReleaseName = "weft"

// DefaultNamespace is the namespace Weft is installed in.
const DefaultNamespace = "weft"

// Load returns the embedded chart with its version and appVersion set to version (the CLI's own, so
// that the images it names are the ones built with it).
func Load(version string) (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(files, "weft", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: strings.TrimPrefix(p, "weft/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("loading the embedded chart: %w", err)
	}
	if version != "" {
		ch.Metadata.AppVersion = version
		if v := strings.TrimPrefix(version, "v"); isSemver(v) {
			ch.Metadata.Version = v
		}
	}
	return ch, nil
}

// isSemver is true for the MAJOR.MINOR.PATCH[-pre][+build] versions a chart's version must be.
func isSemver(v string) bool {
	core, _, _ := strings.Cut(strings.SplitN(v, "+", 2)[0], "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// Manifest is one rendered object (or a template's few objects), in install order.
type Manifest struct {
	Source  string // the template it came from: weft/templates/config.yaml
	Kind    string
	Name    string
	Content string // YAML
}

// Render renders the chart into namespace with values over the chart's defaults (values.yaml), as
// `helm template weft deploy/charts/weft --namespace NS --values ...` does: Helm's engine, strict about
// the chart's kubeVersion, manifests in Helm's install order. Empty templates are left out.
func Render(ch *chart.Chart, namespace string, values map[string]any) ([]Manifest, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	caps := common.DefaultCapabilities
	vals, err := chartutil.ToRenderValues(ch, values, common.ReleaseOptions{
		Name: ReleaseName, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, valuesError(err)
	}
	rendered, err := engine.Render(ch, vals)
	if err != nil {
		return nil, renderError(err)
	}
	for name, content := range rendered {
		// NOTES.txt and partials are not objects.
		if strings.HasPrefix(path.Base(name), "_") || strings.HasSuffix(name, "NOTES.txt") || strings.TrimSpace(content) == "" {
			delete(rendered, name)
		}
	}
	hooks, sorted, err := releaseutil.SortManifests(rendered, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("the rendered chart is not valid YAML: %w", err)
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart has hooks (%s); weft install cannot apply them", hooks[0].Path)
	}
	out := make([]Manifest, 0, len(sorted))
	for _, m := range sorted {
		out = append(out, Manifest{Source: m.Name, Kind: m.Head.Kind, Name: m.Head.Metadata.Name, Content: m.Content})
	}
	return out, nil
}

// valuesError turns the schema validator's report into one line per problem, each naming the value.
func valuesError(err error) error {
	var problems []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "- at '"); ok {
			where, what, _ := strings.Cut(p, "': ")
			where = strings.ReplaceAll(strings.TrimPrefix(where, "/"), "/", ".")
			if where == "" {
				where = "(top level)"
			}
			problems = append(problems, where+": "+what)
		}
	}
	if len(problems) == 0 {
		return fmt.Errorf("chart values: %w", err)
	}
	return fmt.Errorf("chart values: %s (the values and what they mean: deploy/charts/weft/values.yaml)", strings.Join(problems, "; "))
}

// renderError turns the engine's "execution error at (weft/templates/identity.yaml:12:14): ..." into
// the message a `fail` in the chart wrote, with where it came from.
func renderError(err error) error {
	msg := err.Error()
	if i := strings.LastIndex(msg, "): "); i >= 0 && strings.Contains(msg, "execution error at (") {
		return errors.New(msg[i+3:] + " (" + msg[strings.Index(msg, "(")+1:i] + ")")
	}
	return fmt.Errorf("rendering the chart: %w", err)
}

// YAML joins manifests as `helm template` prints them: each after "---" and a "# Source:" comment,
// the whole ending in one newline.
func YAML(ms []Manifest) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Source, m.Content)
	}
	return strings.TrimSpace(b.String()) + "\n"
}
