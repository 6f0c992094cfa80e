package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// preciseSleeper sleeps to the microsecond. time.Sleep cannot: when a Go process has nothing else to
// do, its timers wait in epoll_wait, whose timeout is in whole milliseconds (runtime/netpoll_epoll.go
// rounds a shorter wait up to 1 ms), so an open-loop generator built on time.Sleep wakes 0–1 ms late
// (0.5 ms at the median), and by how much varies with how busy the process is — more than the
// differences between the paths it measures. A timerfd is an hrtimer that Go's poller waits on like a
// socket: the wait ends when the timer fires, within microseconds.
type preciseSleeper struct {
	fd  int // kept apart: os.File.Fd would put the descriptor back into blocking mode
	f   *os.File
	buf [8]byte
}

func newPreciseSleeper() (*preciseSleeper, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	// Non-blocking, so os.NewFile hands it to the runtime's poller: Read parks the goroutine, not the thread.
	return &preciseSleeper{fd: fd, f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

// sleep waits d (nothing for d ≤ 0).
func (s *preciseSleeper) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(s.fd, 0, &spec, nil); err != nil {
		return fmt.Errorf("timerfd_settime: %w", err)
	}
	_, err := s.f.Read(s.buf[:]) // the count of expirations, once the timer has fired
	return err
}

func (s *preciseSleeper) close() { s.f.Close() }
