// Command plots draws pictures from committed results:
//
//	plots bench -out DIR BENCH.json        latency-cdf.png (and growth.png with several scales)
//
// Every picture in the docs is made this way (make plots), so each can be
// drawn again from the JSON committed beside it.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	out := fs.String("out", ".", "directory the pictures are written to")
	_ = fs.Parse(os.Args[2:])
	var written []string
	var err error
	switch os.Args[1] {
	case "bench":
		if fs.NArg() != 1 {
			usage()
		}
		written, err = benchPictures(fs.Arg(0), *out)
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
	fmt.Fprintln(os.Stderr, "usage: plots bench [-out DIR] BENCH.json")
	os.Exit(2)
}
