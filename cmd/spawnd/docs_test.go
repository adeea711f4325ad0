package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/daemon"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/CLI.md and docs/CONFIG.md")

// TestDocsUpToDate regenerates the CLI reference (from the cobra commands)
// and the configuration reference (from the config structs and their field
// comments) and fails when the committed files differ: they can't drift.
func TestDocsUpToDate(t *testing.T) {
	for name, gen := range map[string]func(*testing.T) []byte{"CLI.md": cliReference, "CONFIG.md": configReference} {
		got := gen(t)
		path := filepath.Join("..", "..", "docs", name)
		if *updateDocs {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("docs/%s is out of date; run: go test ./cmd/spawnd -run Docs -update", name)
		}
	}
}

func cliReference(t *testing.T) []byte {
	var b bytes.Buffer
	b.WriteString("# CLI reference\n\nGenerated from the commands by `go test ./cmd/spawnd -run Docs -update`; do not edit.\n\n")
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Runnable() || c.HasSubCommands() {
			fmt.Fprintf(&b, "## %s\n\n%s\n\n", c.CommandPath(), c.Short)
			if c.Long != "" && c.Long != c.Short {
				fmt.Fprintf(&b, "%s\n\n", strings.TrimSpace(c.Long))
			}
			if c.Runnable() {
				fmt.Fprintf(&b, "```\n%s\n```\n\n", c.UseLine())
			}
			if c.Example != "" {
				fmt.Fprintf(&b, "Examples:\n\n```\n%s\n```\n\n", c.Example)
			}
			if fl := c.NonInheritedFlags().FlagUsages(); strings.TrimSpace(fl) != "" {
				fmt.Fprintf(&b, "Flags:\n\n```\n%s```\n\n", fl)
			}
		}
		cmds := c.Commands()
		sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
		for _, sub := range cmds {
			walk(sub)
		}
	}
	root := newRoot()
	root.InitDefaultHelpFlag()
	walk(root)
	return b.Bytes()
}

// fieldComments maps "Type.Field" to the field's doc comment, from sources.
func fieldComments(t *testing.T, files ...string) map[string]string {
	docs := map[string]string{}
	fset := token.NewFileSet()
	for _, file := range files {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			for _, fl := range st.Fields.List {
				if fl.Doc != nil && len(fl.Names) > 0 {
					docs[ts.Name.Name+"."+fl.Names[0].Name] = strings.Join(strings.Fields(fl.Doc.Text()), " ")
				}
			}
			return true
		})
	}
	return docs
}

func configReference(t *testing.T) []byte {
	docs := fieldComments(t, "../../daemon/daemon.go", "../../spawnd/config.go", "../../spawnd/poolconfig.go", "../../spawnd/backends/backends.go")
	var b bytes.Buffer
	b.WriteString("# Configuration reference\n\nGenerated from the config structs by `go test ./cmd/spawnd -run Docs -update`; do not edit.\n\n")
	b.WriteString("`spawnd serve` reads `spawnd.yaml` (`--config`, else `./spawnd.yaml`, else `/etc/spawnd/spawnd.yaml`), then `SPAWND_*` variables, then flags. Unknown keys are errors that name the key. Durations are Go durations (`90s`, `2m`).\n\n")
	b.WriteString("| key | type | env | meaning |\n| --- | --- | --- | --- |\n")
	var walk func(rt reflect.Type, prefix string, envOK bool)
	walk = func(rt reflect.Type, prefix string, envOK bool) {
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if opts == "squash" {
				walk(f.Type, prefix, envOK)
				continue
			}
			if name == "" || !f.IsExported() {
				continue
			}
			key := prefix + name
			doc := docs[rt.Name()+"."+f.Name]
			typ := f.Type.String()
			env := ""
			switch f.Type.Kind() {
			case reflect.Struct:
				fmt.Fprintf(&b, "| `%s` | section | | %s |\n", key, doc)
				walk(f.Type, key+".", envOK)
				continue
			case reflect.Map:
				fmt.Fprintf(&b, "| `%s.<name>` | map | | %s |\n", key, doc)
				walk(f.Type.Elem(), key+".<name>.", false)
				continue
			case reflect.Slice:
				if f.Type.Elem().Kind() == reflect.Struct {
					fmt.Fprintf(&b, "| `%s[]` | list | | %s |\n", key, doc)
					walk(f.Type.Elem(), key+"[].", false)
					continue
				}
				typ = "list of " + f.Type.Elem().String()
			}
			if envOK && f.Type.Kind() != reflect.Slice {
				env = "`SPAWND_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_")) + "`"
			}
			typ = strings.TrimPrefix(strings.ReplaceAll(typ, "time.Duration", "duration"), "*") // *bool: unset means the default
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", key, typ, env, doc)
		}
	}
	walk(reflect.TypeOf(daemon.Config{}), "", true)
	b.WriteString("\nAn example: [deploy/spawnd.yaml](../deploy/spawnd.yaml).\n")
	return b.Bytes()
}

// TestSecurityClaimsNameRealTests: every test docs/SECURITY.md cites exists.
func TestSecurityClaimsNameRealTests(t *testing.T) {
	doc, err := os.ReadFile("../../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	engine := engineTests(t, "../..")
	cited := regexp.MustCompile("`((Test|Fuzz)[A-Za-z0-9]+)`").FindAllStringSubmatch(string(doc), -1)
	if len(cited) < 10 {
		t.Fatalf("SECURITY.md cites only %d tests", len(cited))
	}
	// A claim whose test runs without the engine (pure logic: the HTTP
	// edge, names, fuzzing) says so next to it: "no engine".
	lines := strings.Split(string(doc), "\n")
	for _, m := range cited {
		touches, ok := engine[m[1]]
		if !ok {
			t.Errorf("docs/SECURITY.md cites %s, which does not exist", m[1])
			continue
		}
		if touches {
			continue
		}
		marked := false
		for i, l := range lines {
			if strings.Contains(l, "`"+m[1]+"`") {
				// the claim's paragraph: this line and its neighbours
				para := strings.Join(strings.Fields(strings.Join(lines[max(0, i-3):min(len(lines), i+3)], " ")), " ")
				marked = marked || strings.Contains(para, "no engine")
			}
		}
		if !marked {
			t.Errorf("docs/SECURITY.md cites %s for a claim, but it never reaches a real engine; test the real thing or say \"no engine\" next to it", m[1])
		}
	}
}

// engineTests maps every Test and Fuzz function in the repository's test
// files to whether it reaches a real engine: it calls, directly or through
// functions of its own package, testenv.Engine, testenv.StartOwnEngine or
// docker.New, or runs the spawnd binary's serve command.
func engineTests(t *testing.T, root string) map[string]bool {
	t.Helper()
	type fn struct {
		pkg   string
		calls []string
	}
	funcs := map[string]fn{} // pkg dir + "." + name
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.Contains(p, "/testdata/") {
			return err
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		dir := filepath.Dir(p)
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			var calls []string
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.CallExpr:
					switch fun := x.Fun.(type) {
					case *ast.Ident:
						calls = append(calls, fun.Name)
					case *ast.SelectorExpr:
						if id, ok := fun.X.(*ast.Ident); ok {
							calls = append(calls, id.Name+"."+fun.Sel.Name)
						}
						calls = append(calls, fun.Sel.Name) // methods of the package's own types
					}
				case *ast.BasicLit:
					if x.Value == `"serve"` {
						calls = append(calls, "serve")
					}
				}
				return true
			})
			funcs[dir+"."+fd.Name.Name] = fn{pkg: dir, calls: calls}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	roots := map[string]bool{"testenv.Engine": true, "testenv.StartOwnEngine": true, "docker.New": true, "serve": true}
	memo := map[string]int{} // 0 unknown, 1 visiting, 2 no, 3 yes
	var reaches func(key string) bool
	reaches = func(key string) bool {
		switch memo[key] {
		case 1, 2:
			return false
		case 3:
			return true
		}
		memo[key] = 1
		f := funcs[key]
		for _, c := range f.calls {
			if roots[c] {
				memo[key] = 3
				return true
			}
			if _, ok := funcs[f.pkg+"."+c]; ok && reaches(f.pkg+"."+c) {
				memo[key] = 3
				return true
			}
		}
		memo[key] = 2
		return false
	}
	out := map[string]bool{}
	for key := range funcs {
		name := key[strings.LastIndex(key, ".")+1:]
		if strings.HasPrefix(name, "Test") || strings.HasPrefix(name, "Fuzz") {
			out[name] = out[name] || reaches(key)
		}
	}
	return out
}

// TestProveSecurityPatchesApply: every patch of scripts/prove-security
// still finds the code of its protection (once), and every test it runs is
// one docs/SECURITY.md cites; nothing is run (scripts/prove-security runs
// them). Without it, a protection that moved would leave the script
// patching nothing.
func TestProveSecurityPatchesApply(t *testing.T) {
	out, err := exec.Command("python3", "../../scripts/prove_security.py", "--check").CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/prove_security.py --check: %v\n%s", err, out)
	}
}
