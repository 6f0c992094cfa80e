package conformance

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestTLSConfigsSetMinVersion: every tls.Config literal in the repository, tests included, sets
// MinVersion to TLS 1.2 or 1.3 (Go's default minimum for a server is TLS 1.0 when a client asks for
// it). A config built another way (new(tls.Config), a Clone) must be reviewed by hand; there is none
// today.
func TestTLSConfigsSetMinVersion(t *testing.T) {
	fset := token.NewFileSet()
	literals := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != ".." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		tlsName := importName(f, "crypto/tls")
		if tlsName == "" {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if sel, ok := n.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Config" && isIdent(sel.X, tlsName) {
					literals++
					if v := minVersion(n); v != "VersionTLS12" && v != "VersionTLS13" {
						t.Errorf("%s: tls.Config without MinVersion tls.VersionTLS12 or tls.VersionTLS13 (has %q)", fset.Position(n.Pos()), v)
					}
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "new" && len(n.Args) == 1 {
					if sel, ok := n.Args[0].(*ast.SelectorExpr); ok && sel.Sel.Name == "Config" && isIdent(sel.X, tlsName) {
						t.Errorf("%s: new(tls.Config): write a literal with MinVersion", fset.Position(n.Pos()))
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if literals == 0 {
		t.Fatal("found no tls.Config literal: the walk is broken")
	}
}

// importName is the name a file uses for the package at path ("" when not imported).
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		if strings.Trim(imp.Path.Value, `"`) != path {
			continue
		}
		if imp.Name != nil {
			return imp.Name.Name
		}
		return path[strings.LastIndex(path, "/")+1:]
	}
	return ""
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// minVersion is the constant a tls.Config literal sets MinVersion to (tls.VersionTLS13 → "VersionTLS13").
func minVersion(lit *ast.CompositeLit) string {
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok || !isIdent(kv.Key, "MinVersion") {
			continue
		}
		if sel, ok := kv.Value.(*ast.SelectorExpr); ok {
			return sel.Sel.Name
		}
		return "a non-constant value"
	}
	return ""
}
