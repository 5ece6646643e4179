// Command plots draws pictures from committed results:
//
//	plots bench -out DIR BENCH.json        latency-cdf.png (and growth.png with several scales)
//	plots flame DIR                        NAME.svg, a flame graph, beside every NAME.pprof in DIR
//	plots dashboard -out PNG -dashboard JSON -clusters east,west SCRAPES.txt.gz
//	                                       the Grafana dashboard's panels over a recording of istiod's metrics
//
// Every picture in the docs is made this way (make plots), so each can be
// drawn again from the JSON committed beside it.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	out := fs.String("out", ".", "bench: directory the pictures are written to; dashboard: the PNG")
	dash := fs.String("dashboard", "build/install/observability/dashboard.json", "dashboard: the Grafana dashboard")
	clusters := fs.String("clusters", "east,west", "dashboard: the registries (cluster label) shown, one row each")
	_ = fs.Parse(os.Args[2:])
	var written []string
	var err error
	switch os.Args[1] {
	case "bench":
		if fs.NArg() != 1 {
			usage()
		}
		written, err = benchPictures(fs.Arg(0), *out)
	case "flame":
		if fs.NArg() != 1 {
			usage()
		}
		written, err = flameGraphs(fs.Arg(0))
	case "dashboard":
		if fs.NArg() != 1 {
			usage()
		}
		err = dashboardPicture(*dash, fs.Arg(0), *out, strings.Split(*clusters, ","))
		written = []string{*out}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "plots:", err)
		os.Exit(1)
	}
	for _, w := range written {
		fmt.Println("wrote", w)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: plots bench [-out DIR] BENCH.json\n       plots flame DIR\n       plots dashboard -out PNG [-dashboard JSON] [-clusters a,b] SCRAPES.txt.gz")
	os.Exit(2)
}
