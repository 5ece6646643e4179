package harness

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// ProcessEnv is an Env for TestMain and the demo: temp dirs under one root,
// cleanups run (last first) by Close, also on SIGINT/SIGTERM, so Ctrl-C
// leaves nothing behind.
type ProcessEnv struct {
	root     string
	mu       sync.Mutex
	cleanups []func()
	closed   bool
	Quiet    bool
}

// NewProcessEnv makes an env whose temp dirs live under a fresh directory.
func NewProcessEnv(name string) (*ProcessEnv, error) {
	root, err := os.MkdirTemp("", name+"-")
	if err != nil {
		return nil, err
	}
	e := &ProcessEnv{root: root}
	e.Cleanup(func() { _ = os.RemoveAll(root) })
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\n%v: stopping everything started here...\n", s)
		e.Close()
		fmt.Fprintln(os.Stderr, "stopped.")
		os.Exit(130)
	}()
	return e, nil
}

// Child is an env under e's directory with its own cleanups, for a part of a
// run that ends before the rest (one benchmark scale). Close it when that
// part ends; e closes it too if it is still open then.
func (e *ProcessEnv) Child() *ProcessEnv {
	c := &ProcessEnv{root: e.TempDir(), Quiet: e.Quiet}
	e.Cleanup(c.Close)
	return c
}

// Cleanup implements Env.
func (e *ProcessEnv) Cleanup(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, f)
}

// Logf implements Env.
func (e *ProcessEnv) Logf(format string, args ...any) {
	if !e.Quiet {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

// TempDir implements Env.
func (e *ProcessEnv) TempDir() string {
	d, err := os.MkdirTemp(e.root, "")
	if err != nil {
		panic(err)
	}
	return d
}

// Root is the env's directory (logs of every component live below it).
func (e *ProcessEnv) Root() string { return e.root }

// Close runs the cleanups once, last registered first.
func (e *ProcessEnv) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	fs := e.cleanups
	e.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
