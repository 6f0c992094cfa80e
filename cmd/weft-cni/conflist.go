package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// configExts are the file name extensions of CNI network configurations, as runtimes (libcni's
// ConfFiles) read them: the lexically first such file in the folder is the node's network.
var configExts = []string{".conf", ".conflist", ".json"}

func isConfigFile(name string) bool {
	return !strings.HasPrefix(name, ".") && slices.Contains(configExts, filepath.Ext(name))
}

// primaryConfig is the configuration the runtime uses: the lexically first of names that is one.
func primaryConfig(names []string) string {
	names = slices.Clone(names)
	slices.Sort(names)
	for _, n := range names {
		if isConfigFile(n) {
			return n
		}
	}
	return ""
}

// Patch is what to do to the node's configuration folder to chain weft-cni.
type Patch struct {
	Write  string // the file to write; "" when the configuration already chains this entry
	Data   []byte
	Remove string // a .conf file replaced by the .conflist Write (else "")
}

// patchConfig chains entry to the network configuration in file name with content data: a conflist
// gets the entry as its last plugin (an earlier weft-cni entry anywhere in the list is replaced); a
// single-plugin .conf (or .json) becomes a .conflist of that plugin and the entry, under the same name
// with the .conflist extension. Everything else in the file is kept (the other plugins byte for byte).
// A second run on its own output changes nothing.
func patchConfig(name string, data []byte, entry Entry) (Patch, error) {
	entryJSON, err := json.Marshal(entry)
	if err != nil {
		return Patch{}, err
	}
	top, plugins, isList, err := parseConfig(name, data)
	if err != nil {
		return Patch{}, err
	}
	var kept []json.RawMessage
	for _, p := range plugins {
		if !isOurs(p) {
			kept = append(kept, p)
		}
	}
	if len(kept) == 0 {
		return Patch{}, fmt.Errorf("%s: no network plugin besides weft-cni; weft-cni chains to the node's network plugin, which must be configured first", name)
	}
	want := append(kept, entryJSON)
	if isList && slices.EqualFunc(plugins, want, sameJSON) {
		return Patch{}, nil
	}
	if !isList {
		single := top
		top = map[string]json.RawMessage{}
		for _, k := range []string{"cniVersion", "name"} {
			if v, ok := single[k]; ok {
				top[k] = v
			}
		}
	}
	list, err := json.Marshal(want)
	if err != nil {
		return Patch{}, err
	}
	top["plugins"] = list
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return Patch{}, err
	}
	p := Patch{Write: name, Data: append(out, '\n')}
	if !isList {
		p.Write = strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
		p.Remove = name
	}
	return p, nil
}

// unpatchConfig takes weft-cni's entries out of a conflist; changed is false when it had none.
func unpatchConfig(name string, data []byte) (out []byte, changed bool, err error) {
	top, plugins, isList, err := parseConfig(name, data)
	if err != nil || !isList {
		return nil, false, err
	}
	kept := slices.DeleteFunc(slices.Clone(plugins), isOurs)
	if len(kept) == len(plugins) {
		return nil, false, nil
	}
	list, err := json.Marshal(kept)
	if err != nil {
		return nil, false, err
	}
	top["plugins"] = list
	out, err = json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, false, err
	}
	return append(out, '\n'), true, nil
}

// parseConfig reads a configuration file's top-level object and its plugins (one for a .conf).
func parseConfig(name string, data []byte) (top map[string]json.RawMessage, plugins []json.RawMessage, isList bool, err error) {
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, nil, false, fmt.Errorf("%s is not a JSON object: %w", name, err)
	}
	if top == nil {
		return nil, nil, false, fmt.Errorf("%s is not a JSON object", name)
	}
	raw, isList := top["plugins"]
	if !isList {
		if filepath.Ext(name) == ".conflist" {
			return nil, nil, false, fmt.Errorf(`%s has no "plugins" list`, name)
		}
		return top, []json.RawMessage{json.RawMessage(bytes.TrimSpace(data))}, false, nil
	}
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return nil, nil, false, fmt.Errorf(`%s: "plugins" is not a list of objects: %w`, name, err)
	}
	for i, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(p, &t); err != nil || t.Type == "" {
			return nil, nil, false, fmt.Errorf(`%s: plugin %d has no "type"`, name, i)
		}
	}
	return top, plugins, true, nil
}

func isOurs(p json.RawMessage) bool {
	var t struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(p, &t) == nil && t.Type == PluginType
}

// sameJSON compares two JSON texts ignoring insignificant white space.
func sameJSON(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return false
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

var errNoConfig = errors.New("no CNI network configuration yet")
