package bench

import (
	"iter"
	"sync"
)

// inParallel calls do for every item on n workers and returns the first
// error; items stop being produced once one fails.
func inParallel[T any](n int, items iter.Seq[T], do func(T) error) error {
	ch := make(chan T)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for it := range ch {
				if err := do(it); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
produce:
	for it := range items {
		select {
		case ch <- it:
		case err = <-errs:
			break produce
		}
	}
	close(ch)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	return err
}

// inBackground runs do in a goroutine; its error arrives on the channel.
func inBackground(do func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- do() }()
	return ch
}
