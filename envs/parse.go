package envs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses a spec file.
func Load(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading env spec: %w", err)
	}
	return Parse(path, b)
}

// Parse decodes a spec strictly (an unknown field or a value of the wrong
// kind is an error at its file:line:column), fills defaults and validates it.
func Parse(file string, data []byte) (*Spec, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{Pos: Pos{File: file}, Msg: "the file is empty; see envs/team.yaml for an example"}
		}
		return nil, yamlErr(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{Pos: Pos{File: file, Line: extra.Line, Column: extra.Column}, Msg: "a second YAML document; a spec file holds one"}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	pos := positions{}
	if err := check(file, doc, reflect.TypeOf(Spec{}), "", pos); err != nil {
		return nil, err
	}
	var s Spec
	if err := doc.Decode(&s); err != nil {
		return nil, yamlErr(file, err)
	}
	s.pos, s.File = pos, file
	if err := s.validate(pos, file); err != nil {
		return nil, err
	}
	return &s, nil
}

func yamlErr(file string, err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: ")
	var line int
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
	}
	return &Error{Pos: Pos{File: file, Line: line, Column: 1}, Msg: "invalid YAML: " + msg}
}

// check walks the YAML tree against the Go type: every mapping key must be a
// field, every value of the kind the field takes. It records the position of
// every field path on the way.
func check(file string, n *yaml.Node, t reflect.Type, path string, pos positions) error {
	p := Pos{File: file, Line: n.Line, Column: n.Column}
	if path != "" {
		pos[path] = p
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		return &Error{Pos: p, Field: path, Msg: "YAML aliases are not allowed in a spec"}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return &Error{Pos: p, Field: path, Msg: "must be a mapping (key: value)"}
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f
			names = append(names, name)
		}
		sort.Strings(names)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := Pos{File: file, Line: k.Line, Column: k.Column}
			sub := k.Value
			if path != "" {
				sub = path + "." + k.Value
			}
			f, ok := fields[k.Value]
			if !ok {
				return &Error{Pos: kp, Field: sub, Msg: fmt.Sprintf("unknown field; known fields here: %s", strings.Join(names, ", "))}
			}
			if seen[k.Value] {
				return &Error{Pos: kp, Field: sub, Msg: "given twice"}
			}
			seen[k.Value] = true
			if err := check(file, v, f.Type, sub, pos); err != nil {
				return err
			}
			pos[sub] = kp
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return &Error{Pos: p, Field: path, Msg: "must be a list"}
		}
		for i, item := range n.Content {
			if err := check(file, item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), pos); err != nil {
				return err
			}
		}
	case reflect.Map:
		// jupyter.settings: plugin ID → that plugin's settings, which must
		// be JSON (JupyterLab reads them as such).
		if n.Kind != yaml.MappingNode {
			return &Error{Pos: p, Field: path, Msg: "must be a mapping (plugin ID: its settings)"}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := fmt.Sprintf("%s[%q]", path, k.Value)
			kp := Pos{File: file, Line: k.Line, Column: k.Column}
			if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
				return &Error{Pos: kp, Field: path, Msg: fmt.Sprintf("key %q must be a string (a plugin ID)", k.Value)}
			}
			if seen[k.Value] {
				return &Error{Pos: kp, Field: sub, Msg: "given twice"}
			}
			seen[k.Value] = true
			if v.Kind != yaml.MappingNode {
				return &Error{Pos: Pos{File: file, Line: v.Line, Column: v.Column}, Field: sub, Msg: "must be a mapping of the plugin's settings"}
			}
			if err := checkJSON(file, v, sub); err != nil {
				return err
			}
			pos[sub] = kp
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return &Error{Pos: p, Field: path, Msg: "must be a string"}
		}
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return &Error{Pos: p, Field: path, Msg: fmt.Sprintf("must be a whole number, not %q", n.Value)}
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return &Error{Pos: p, Field: path, Msg: "must be true or false"}
		}
	}
	return nil
}

// checkJSON refuses what a YAML value may hold and JSON may not: a key that
// is not a string, a key given twice, an alias, a timestamp, binary, NaN or
// an infinity.
func checkJSON(file string, n *yaml.Node, path string) error {
	p := Pos{File: file, Line: n.Line, Column: n.Column}
	switch n.Kind {
	case yaml.AliasNode:
		return &Error{Pos: p, Field: path, Msg: "YAML aliases are not allowed in a spec"}
	case yaml.MappingNode:
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := path + "." + k.Value
			if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
				return &Error{Pos: Pos{File: file, Line: k.Line, Column: k.Column}, Field: sub, Msg: "not valid JSON: a key must be a string (quote it)"}
			}
			if seen[k.Value] {
				return &Error{Pos: Pos{File: file, Line: k.Line, Column: k.Column}, Field: sub, Msg: "given twice"}
			}
			seen[k.Value] = true
			if err := checkJSON(file, v, sub); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			if err := checkJSON(file, item, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str", "!!int", "!!bool", "!!null":
		case "!!float":
			if v := strings.ToLower(strings.TrimLeft(n.Value, "+-")); v == ".nan" || v == ".inf" {
				return &Error{Pos: p, Field: path, Msg: fmt.Sprintf("not valid JSON: %s is not a JSON number", n.Value)}
			}
		default:
			return &Error{Pos: p, Field: path, Msg: fmt.Sprintf("not valid JSON: %q reads as YAML %s; quote it to give a string", n.Value, strings.TrimPrefix(n.Tag, "!!"))}
		}
	}
	return nil
}
