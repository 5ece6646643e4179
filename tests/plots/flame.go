package main

// flame.go draws a profile (pprof: CPU, or heap) as a flame graph in SVG:
// the root at the bottom, each frame as wide as the CPU time (or bytes)
// under it, coloured by whose code it is, so that a profile answers "ours
// or upstream's" at a glance. No graphviz, no Perl: the profile package
// and text.

import (
	"fmt"
	"html"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// frame is one node of the call tree: a function under its callers.
type frame struct {
	name     string
	total    int64
	children map[string]*frame
}

func (f *frame) child(name string) *frame {
	c, ok := f.children[name]
	if !ok {
		c = &frame{name: name, children: map[string]*frame{}}
		f.children[name] = c
	}
	return c
}

// owners colour frames by whose code they are, first match wins.
var owners = []struct {
	prefix, label, fill string
}{
	{"istio.io/istio/pilot/pkg/serviceregistry/consul", "ours (pilot/pkg/serviceregistry/consul)", "#1f5fa8"},
	{"github.com/hashicorp/consul/api", "Consul's Go client (called by ours)", "#5a9bd5"},
	{"istio.io/istio/", "upstream Istio", "#d95f0e"},
	{"google.golang.org/", "gRPC and protobuf", "#e6a045"},
	{"github.com/hashicorp/", "Consul server, other HashiCorp code", "#2c8c5a"},
	{"encoding/json", "encoding/json", "#8c6bb1"},
	{"runtime", "Go runtime and GC", "#9e9e9e"},
	{"", "other", "#c7c7c7"},
}

// namedOwners: the first five owners are code someone owns; a sample is
// charged to the innermost of them on its stack.
const namedOwners = 5

func ownerOf(name string) int {
	for i, o := range owners {
		if strings.HasPrefix(name, o.prefix) {
			return i
		}
	}
	return len(owners) - 1
}

// flameGraph draws sample type value of p into a flame graph titled title.
func flameGraph(p *profile.Profile, value int, title string) (string, error) {
	root := &frame{name: "all", children: map[string]*frame{}}
	byOwner := map[int]int64{}
	for _, s := range p.Sample {
		v := s.Value[value]
		root.total += v
		node := root
		var stack []string
		// Locations run leaf first; a location's lines run inlined callee first.
		for i := len(s.Location) - 1; i >= 0; i-- {
			lines := s.Location[i].Line
			for j := len(lines) - 1; j >= 0; j-- {
				node = node.child(lines[j].Function.Name)
				node.total += v
				stack = append(stack, lines[j].Function.Name)
			}
		}
		byOwner[blame(stack)] += v
	}
	if root.total == 0 {
		return "", fmt.Errorf("no samples of %s", p.SampleType[value].Type)
	}
	var what string
	switch st := p.SampleType[value]; {
	case st.Unit == "bytes" && strings.HasPrefix(st.Type, "alloc"):
		what = fmt.Sprintf("%.0f MiB allocated since start", float64(root.total)/(1<<20))
	case st.Unit == "bytes":
		what = fmt.Sprintf("%.0f MiB in use (sampled)", float64(root.total)/(1<<20))
	default:
		what = fmt.Sprintf("%.2f s of CPU in %.1f s", float64(root.total)/1e9, float64(p.DurationNanos)/1e9)
	}
	return renderFlame(root, byOwner, title+" — "+what), nil
}

// drawings are the flame graphs of the profile at in, by file name: NAME.svg
// for its last sample type (CPU time; a heap profile's bytes in use) and,
// for a heap profile, NAME-alloc.svg for the bytes allocated since start
// (the garbage a peak RSS also holds).
func drawings(in string) (map[string]string, error) {
	f, err := os.Open(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	name := strings.TrimSuffix(filepath.Base(in), ".pprof")
	base := strings.TrimSuffix(in, ".pprof")
	out := map[string]string{}
	svg, err := flameGraph(p, len(p.SampleType)-1, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	out[base+".svg"] = svg
	for i, st := range p.SampleType {
		if st.Type == "alloc_space" {
			if out[base+"-alloc.svg"], err = flameGraph(p, i, name); err != nil {
				return nil, fmt.Errorf("%s: %w", in, err)
			}
		}
	}
	return out, nil
}

// blame is the owner a sample's CPU is charged to: the innermost frame of
// named code (ours, Consul's client, Istio's, gRPC's), so that the runtime's
// allocation and GC work count for the code that allocated; the runtime or
// "other" only when no such frame is on the stack.
func blame(rootFirst []string) int {
	leaf := len(owners) - 1
	for i := len(rootFirst) - 1; i >= 0; i-- {
		o := ownerOf(rootFirst[i])
		if o < namedOwners {
			return o
		}
		if i == len(rootFirst)-1 {
			leaf = o
		}
	}
	return leaf
}

const (
	flameWidth = 1200.0
	rowHeight  = 16.0
	legendRows = 2
)

func renderFlame(root *frame, byOwner map[int]int64, title string) string {
	depth := maxDepth(root)
	height := float64(depth+3+legendRows) * rowHeight
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="monospace" font-size="11">`+"\n", flameWidth, height)
	fmt.Fprintf(&b, `<text x="4" y="13" font-size="13">%s</text>`+"\n", html.EscapeString(title))
	// Legend, with the share charged to each owner (blame).
	for i, o := range owners {
		x := 4 + float64(i%4)*300
		y := rowHeight*1.3 + float64(i/4)*rowHeight
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="10" height="10" fill="%s"/><text x="%.1f" y="%.1f">%s %.0f %%</text>`+"\n",
			x, y, o.fill, x+14, y+9, html.EscapeString(o.label), 100*float64(byOwner[i])/float64(root.total))
	}
	base := height - rowHeight
	drawFrame(&b, root, 0, flameWidth, base, root.total)
	b.WriteString("</svg>\n")
	return b.String()
}

// drawFrame draws f at x with width w on row y, then its children above it,
// widest first.
func drawFrame(b *strings.Builder, f *frame, x, w, y float64, total int64) {
	if w < 0.5 {
		return
	}
	fill, ink := owners[ownerOf(f.name)].fill, "#ffffff"
	if f.name == "all" {
		fill, ink = "#eeeeee", "#000000"
	}
	share := 100 * float64(f.total) / float64(total)
	fmt.Fprintf(b, `<g><title>%s (%.1f %%)</title><rect x="%.1f" y="%.1f" width="%.1f" height="%.0f" fill="%s" stroke="#ffffff" stroke-width="0.5"/>`,
		html.EscapeString(f.name), share, x, y, w, rowHeight-1, fill)
	if chars := int((w - 4) / 6.6); chars >= 3 {
		name := shortFunc(f.name)
		if len(name) > chars {
			name = name[:chars-1] + "…"
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="%s">%s</text>`, x+2, y+rowHeight-4, ink, html.EscapeString(name))
	}
	b.WriteString("</g>\n")
	kids := make([]*frame, 0, len(f.children))
	for _, c := range f.children {
		kids = append(kids, c)
	}
	slices.SortFunc(kids, func(a, c *frame) int {
		if a.total != c.total {
			return int(c.total - a.total)
		}
		return strings.Compare(a.name, c.name)
	})
	for _, c := range kids {
		cw := w * float64(c.total) / float64(f.total)
		drawFrame(b, c, x, cw, y-rowHeight, total)
		x += cw
	}
}

// shortFunc drops the package path: "(*Controller).work" reads better than
// the whole import path in a narrow box (the tooltip has it all).
func shortFunc(name string) string {
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	return name
}

func maxDepth(f *frame) int {
	d := 0
	for _, c := range f.children {
		d = max(d, maxDepth(c))
	}
	return d + 1
}

// flameGraphs draws every profile in dir beside it (drawings).
func flameGraphs(dir string) ([]string, error) {
	profiles, err := filepath.Glob(filepath.Join(dir, "*.pprof"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, in := range profiles {
		svgs, err := drawings(in)
		if err != nil {
			return nil, err
		}
		for _, path := range slices.Sorted(maps.Keys(svgs)) {
			if err := os.WriteFile(path, []byte(svgs[path]), 0o644); err != nil {
				return nil, err
			}
			out = append(out, path)
		}
	}
	return out, nil
}
