package netsim

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread that has joined the network namespace at
// nsPath. A socket belongs to the namespace it was created in, for life, so
// a socket made inside fn keeps working from any goroutine afterwards: this
// is how the test process dials into a site, and how the wire opens its
// packet sockets, without a helper process.
//
// fn must not start goroutines that create sockets: they would run on other
// threads, in the caller's namespace.
func inNetns(nsPath string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is handed back to the scheduler only once it is back
		// in its original namespace. If that fails it stays locked, and Go
		// ends a locked thread when its goroutine exits, so no other
		// goroutine ever runs in the wrong namespace.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", nsPath, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("return from network namespace %s: %w", nsPath, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}
