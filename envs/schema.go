package envs

import (
	"encoding/json"
	"reflect"
	"strings"
)

// Schema returns the JSON Schema of the spec, made from the Go types (field
// names from their yaml tags) and the field comments in docs (keyed
// "Type.Field"), so editors can check spec files. envs/spec.schema.json is
// this output; a test keeps it current.
func Schema(docs map[string]string) []byte {
	root := schemaOf(reflect.TypeOf(Spec{}), docs)
	root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	root["$id"] = "https://spawnd.dev/schema/env-spec.json"
	root["title"] = "spawnd env spec"
	root["description"] = "A team environment: base image, apt, conda and pip packages, Jupyter kernels, user. `spawnd lock` pins it; `spawnd build` makes its image."
	b, _ := json.MarshalIndent(root, "", "  ")
	return append(b, '\n')
}

func schemaOf(t reflect.Type, docs map[string]string) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "" || name == "-" {
				continue
			}
			s := schemaOf(f.Type, docs)
			if d := docs[t.Name()+"."+f.Name]; d != "" {
				s["description"] = d
			}
			props[name] = s
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				required = append(required, name)
			}
		}
		out := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			out["required"] = required
		}
		return out
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), docs)}
	case reflect.Map:
		// jupyter.settings: any JSON object per plugin ID.
		return map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "object"}}
	case reflect.Int:
		return map[string]any{"type": "integer"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	default:
		return map[string]any{"type": "string"}
	}
}
